"""infra/template.yaml: lints, translates offline with aws-sam-translator, deploys on moto's CloudFormation
(checking what moto really applies), grants least privilege; and the Lambda entry point serves through Mangum."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.aws.support import REGION, REPO, in_process_clients, mocked_aws, moto_target

TEMPLATE = REPO / "infra" / "template.yaml"
EVENTS = REPO / "infra" / "events"
ROOT_TOKEN = "tsr_lambda-root-token-0123456789abcdef"
FUNCTIONS = ["Get", "Write", "History", "Rollback", "Policy", "Auth", "Watch", "Audit"]
WRITE_ACTIONS = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem",
                 "dynamodb:BatchWriteItem", "dynamodb:*"}


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
    table = resources["Table"]["Properties"]
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["StreamSpecification"]["StreamViewType"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert resources["Key"]["Properties"]["EnableKeyRotation"] is True
    assert {f"{name}Function" for name in FUNCTIONS} <= set(resources)


def _role_statements(translated: dict[str, Any], function: str) -> list[dict[str, Any]]:
    role = translated["Resources"][f"{function}FunctionRole"]["Properties"]
    statements = []
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            statements.append({**statement, "Action": actions})
    return statements


def test_each_function_has_least_privilege(translated):
    for function in FUNCTIONS:
        statements = _role_statements(translated, function)
        actions = {a for s in statements for a in s["Action"]}
        assert statements, function
        assert not any(a.endswith("*") for a in actions), (function, actions)  # no wildcards
        assert "s3:DeleteBucket" not in actions and not any(a.startswith("s3:Delete") for a in actions), function
        assert "dynamodb:DeleteTable" not in actions and "kms:ScheduleKeyDeletion" not in actions
    for function in ("Get", "History", "Watch", "Audit"):
        for statement in _role_statements(translated, function):
            writes = WRITE_ACTIONS & set(statement["Action"])
            if writes:  # only audit appends, pinned to the audit partitions
                assert statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == ["AUDITLOG#*", "AUDITSHARD", "AUDITCKPT"]
            assert not any(a in ("s3:PutObject", "kms:GenerateDataKey", "kms:Encrypt") for a in statement["Action"]), function
    for function in ("Policy", "Auth"):
        actions = {a for s in _role_statements(translated, function) for a in s["Action"]}
        assert not any(a.startswith(("s3:", "kms:")) for a in actions), function
        for statement in _role_statements(translated, function):
            if WRITE_ACTIONS & set(statement["Action"]):  # never the config items nor the revision counter
                leading = statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
                assert not {"COUNTER", "H#*", "V#*", "*"} & set(leading), (function, leading)


def test_routes_reach_their_function(translated):
    template = load_template()["Resources"]
    routes = {
        (event["Properties"]["Method"], event["Properties"]["Path"]): name
        for name, resource in template.items()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"]["Events"].values()
    }
    assert routes[("GET", "/config/{proxy+}")] == "GetFunction"
    assert routes[("PUT", "/config/{proxy+}")] == "WriteFunction"
    assert routes[("GET", "/config/history/{proxy+}")] == "HistoryFunction"
    assert routes[("POST", "/config/rollback/{proxy+}")] == "RollbackFunction"
    assert routes[("GET", "/watch")] == "WatchFunction" and routes[("GET", "/audit")] == "AuditFunction"
    types = {resource["Type"] for resource in translated["Resources"].values()}
    assert {"AWS::ApiGatewayV2::Api", "AWS::Lambda::Function", "AWS::IAM::Role"} <= types


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
        template = copy.deepcopy(translated)
        name = "tessera-smoke"
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(template),
                         Parameters=[{"ParameterKey": "RootToken", "ParameterValue": ROOT_TOKEN}],
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
            assert config["Handler"] == f"tessera.handlers.lambda_.{function.lower()}_handler"
            assert config["Environment"]["Variables"]["TESSERA_TABLE"] == physical["Table"]
            assert iam.get_role(RoleName=physical[f"{function}FunctionRole"])["Role"]


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
        monkeypatch.setenv("TESSERA_ROOT_TOKEN", ROOT_TOKEN)
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
        monkeypatch.setenv("TESSERA_TABLE", "no-such-table")
        monkeypatch.setenv("TESSERA_ROOT_TOKEN", ROOT_TOKEN)
        lambda_.reset()
        try:
            response = lambda_.get_handler(_event("get.json"), _Context())
            assert response["statusCode"] == 503
            error = json.loads(response["body"])["error"]
            assert error["code"] == "unavailable" and error["request_id"] == "sample-request-1"
            assert lambda_._handler is None  # the next invocation tries again
        finally:
            lambda_.reset()
