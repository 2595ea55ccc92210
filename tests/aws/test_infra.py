"""infra/template.yaml: lints, translates offline with aws-sam-translator, deploys on moto's CloudFormation
(checking what moto really applies), grants least privilege; and the Lambda entry point serves through Mangum."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tessera.core.tokens import hash_token
from tests.aws.support import REGION, REPO, in_process_clients, mocked_aws, moto_target

TEMPLATE = REPO / "infra" / "template.yaml"
EVENTS = REPO / "infra" / "events"
ROOT_TOKEN = "tsr_lambda-root-token-0123456789abcdef"
FUNCTIONS = ["Read", "Write", "Admin", "Watch", "Live"]


def load_template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    return json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))


def translate(code_bucket: str = "tessera-code") -> dict[str, Any]:
    """The SAM transform, offline: code from S3 (moto can create the functions) and no managed-policy lookups."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    template = load_template()
    template["Globals"]["Function"]["CodeUri"] = f"s3://{code_bucket}/tessera.zip"
    return transform(template, {"AWS::Region": REGION}, NoManagedPolicies())


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate()


def test_cfn_lint_passes():
    result = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_declares_the_required_settings():
    resources = load_template()["Resources"]
    bucket = resources["ValuesBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["LifecycleConfiguration"]["Rules"]
    statements = resources["ValuesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}} for s in statements)
    for function in FUNCTIONS:  # log groups with retention; no function holds the root token itself
        assert resources[f"{function}LogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert "TESSERA_ROOT_TOKEN" not in variables and variables["TESSERA_ROOT_TOKEN_SHA256"] == {"Ref": "RootTokenSha256"}
    assert variables["TESSERA_CHANGE_LOG_RETENTION_DAYS"] == {"Ref": "ChangeLogRetentionDays"}
    assert variables["TESSERA_AUDIT_RETENTION_DAYS"] == {"Ref": "AuditRetentionDays"}
    assert resources["WatchFunction"]["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "WatchConcurrency"}
    table = resources["Table"]["Properties"]
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["StreamSpecification"]["StreamViewType"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert resources["Key"]["Properties"]["EnableKeyRotation"] is True
    assert {f"{name}Function" for name in FUNCTIONS} <= set(resources)


def test_each_role_is_least_privilege_on_paper(translated):
    """The static half (the dynamic half drives every route under each role: tests/aws/test_privilege.py): inline
    policies only (no managed policy), no wildcard action, no ``Resource: "*"``, every DynamoDB statement pinned to
    partitions, every KMS statement to Tessera's encryption context, and the partitions that make a principal an
    admin (tokens, policies, meta, the auth stamp) writable by the admin role alone."""
    from tests.aws.privilege import check_least_privilege_statically

    check_least_privilege_statically(translated)


def test_routes_reach_their_function(translated):
    from tests.aws.privilege import routes

    table = routes(load_template())
    assert table.function_for("GET", "/config/database.host") == "ReadFunction"
    assert table.function_for("GET", "/config/history/database.host") == "ReadFunction"
    assert table.function_for("PUT", "/config/database.host") == "WriteFunction"
    assert table.function_for("POST", "/config/rollback/database.host") == "WriteFunction"
    assert table.function_for("POST", "/config/import") == "WriteFunction"
    assert table.function_for("DELETE", "/policies/p") == "AdminFunction"
    assert table.function_for("GET", "/watch") == "WatchFunction" and table.function_for("GET", "/audit") == "ReadFunction"
    # Unmatched routes reach the app (the $default route), which answers in the contract's error shape.
    assert table.function_for("GET", "/nope") == "ReadFunction" and table.function_for("PATCH", "/config/x") == "ReadFunction"
    types = {resource["Type"] for resource in translated["Resources"].values()}
    assert {"AWS::ApiGatewayV2::Api", "AWS::Lambda::Function", "AWS::IAM::Role"} <= types
    assert "$default" in json.dumps(translated["Resources"]["HttpApi"]["Properties"])


@pytest.mark.slow
def test_translated_template_deploys_on_moto_cloudformation(translated):
    with mocked_aws():
        clients = in_process_clients()
        import boto3

        session = boto3.session.Session(region_name=REGION)
        cfn, iam = session.client("cloudformation"), session.client("iam")
        clients.s3.create_bucket(Bucket="tessera-code")
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handlers/lambda_.py", (REPO / "handlers" / "lambda_.py").read_text())
        clients.s3.put_object(Bucket="tessera-code", Key="tessera.zip", Body=code.getvalue())
        # moto's CloudFormation has no AWS::Lambda::Alias (SnapStart serves through the published alias): point
        # what names an alias at its function instead.
        resources = {name: resource for name, resource in translated["Resources"].items() if resource["Type"] != "AWS::Lambda::Alias"}
        template = json.loads(re.sub(r"(\w+Function)Alias\w+", r"\1", json.dumps({**translated, "Resources": resources})))
        name = "tessera-smoke"
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(template),
                         Parameters=[{"ParameterKey": "RootTokenSha256", "ParameterValue": hash_token(ROOT_TOKEN)}],
                         Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"])
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
        # Table: exists, with its stream (what moto applies from CloudFormation).
        table = clients.dynamodb.describe_table(TableName=physical["Table"])["Table"]
        assert table["KeySchema"] == [{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}]
        assert table["StreamSpecification"]["StreamEnabled"] is True
        # Bucket: exists, SSE-KMS by default. (moto's CloudFormation drops VersioningConfiguration silently, so
        # versioning is checked in the template above and by `tessera aws init` against moto below.)
        encryption = clients.s3.get_bucket_encryption(Bucket=physical["ValuesBucket"])
        rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
        assert rule["SSEAlgorithm"] == "aws:kms"
        # Key: exists, rotation on.
        key_id = physical["Key"]
        assert clients.kms.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"]
        assert clients.kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
        assert "alias/tessera" in {a["AliasName"] for a in clients.kms.list_aliases()["Aliases"]}
        # Not applied by moto 5.2's CloudFormation (checked; see docs/aws.md): table TTL, PITR and SSE, bucket
        # versioning, public access block, lifecycle and the bucket policy. The test above checks the template
        # declares them and test_init_applies_every_bucket_and_table_setting checks moto applies them via the API.
        # Functions and their roles.
        lambdas = session.client("lambda")
        for function in FUNCTIONS:
            config = lambdas.get_function_configuration(FunctionName=physical[f"{function}Function"])
            handler = "live_handler" if function == "Live" else "handler"
            assert config["Handler"] == f"tessera.handlers.lambda_.{handler}"
            assert config["Environment"]["Variables"]["TESSERA_TABLE"] == physical["Table"]
            assert iam.get_role(RoleName=physical[f"{function}Role"])["Role"]


def test_init_applies_every_bucket_and_table_setting():
    """Where moto's CloudFormation skips a setting, `tessera aws init` (same settings) shows moto applies it."""
    from tessera.core.backends.aws_setup import provision

    with mocked_aws() as clients:
        result = provision(clients, bucket="tessera-init-check", table="tessera-init-check", kms_key_id="alias/tessera-init",
                           region=REGION)
        assert clients.s3.get_bucket_versioning(Bucket=result.bucket)["Status"] == "Enabled"
        block = clients.s3.get_public_access_block(Bucket=result.bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())
        policy = json.loads(clients.s3.get_bucket_policy(Bucket=result.bucket)["Policy"])
        assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert clients.s3.get_bucket_lifecycle_configuration(Bucket=result.bucket)["Rules"]
        ttl = clients.dynamodb.describe_time_to_live(TableName=result.table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
        backups = clients.dynamodb.describe_continuous_backups(TableName=result.table)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
        assert clients.kms.get_key_rotation_status(KeyId=result.kms_key_arn)["KeyRotationEnabled"] is True


# ---------------------------------------------------------------------- the Lambda entry point
def _event(name: str, token: str = ROOT_TOKEN) -> dict[str, Any]:
    text = (EVENTS / name).read_text().replace("REPLACE_WITH_ROOT_TOKEN", token)
    return json.loads(text)


class _Context:
    function_name = "tessera-get"
    aws_request_id = "lambda-request-1"


def test_lambda_entry_point_serves_a_value_through_mangum(monkeypatch):
    from tessera.handlers import lambda_

    with moto_target() as target:
        for name, value in target.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TESSERA_ROOT_TOKEN_SHA256", hash_token(ROOT_TOKEN))  # as the template sets it
        lambda_.reset()
        try:
            put = lambda_.write_handler(_event("put.json"), _Context())
            assert put["statusCode"] == 201, put
            response = lambda_.get_handler(_event("get.json"), _Context())
            assert response["statusCode"] == 200, response
            body = json.loads(response["body"])
            assert body["value"] == "db.internal" and body["version"] == 1 and body["key"] == "database.host"
            assert response["headers"]["x-request-id"] == "sample-request-1"
            health = json.loads(lambda_.handler(_event("health.json"), _Context())["body"])
            assert health["backend"] == "aws" and health["revision"] == 1
            denied = lambda_.get_handler(_event("get.json", token="tsr_wrong-token-000000000000"), _Context())
            assert denied["statusCode"] == 401 and json.loads(denied["body"])["error"]["code"] == "unauthenticated"
        finally:
            lambda_.reset()


def test_lambda_that_cannot_start_answers_503_in_the_contract_shape(monkeypatch):
    from tessera.handlers import lambda_

    with moto_target() as target:
        for name, value in target.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TESSERA_ROOT_TOKEN_SHA256", hash_token(ROOT_TOKEN))  # as the template sets it
        monkeypatch.delenv("TESSERA_BUCKET")  # a broken deployment: the app cannot be built
        lambda_.reset()
        try:
            response = lambda_.get_handler(_event("get.json"), _Context())
            assert response["statusCode"] == 503
            error = json.loads(response["body"])["error"]
            assert error["code"] == "unavailable" and error["request_id"] == "sample-request-1"
            assert lambda_._handler is None  # the next invocation tries again
            # A table that does not exist: the app starts (building it does no I/O), each request answers 503.
            monkeypatch.setenv("TESSERA_BUCKET", target.bucket)
            monkeypatch.setenv("TESSERA_TABLE", "no-such-table")
            lambda_.reset()
            response = lambda_.get_handler(_event("get.json"), _Context())
            assert response["statusCode"] == 503
            assert json.loads(response["body"])["error"]["code"] == "unavailable"
        finally:
            lambda_.reset()
