"""Least privilege, checked against infra/template.yaml itself.

- ``routes``: which function API Gateway sends a request to (method + path, most specific route first, then
  ``$default``), read from the template's ``HttpApi`` events.
- ``role_statements``: every IAM statement a function's role carries (inline policies; managed policies are
  refused outright, since their content is not in the template to check).
- ``check_least_privilege_statically``: no wildcard action, no ``Resource: "*"``, DynamoDB pinned to partitions,
  KMS to Tessera's encryption context, admin-making partitions writable by the admin role only.
- ``Enforcer``: a small IAM evaluator hooked into botocore; every call a node makes is checked against the role
  of the function serving the request, and every partition pattern a role grants is ticked off when used, so
  a test can fail on a call the role does not allow *and* on a grant no route needs.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

DYNAMO_WRITES = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem",
                 "dynamodb:BatchWriteItem"}  # fmt: skip
# Writing these makes a principal an admin (or lets it forge one): only the admin role may.
ADMIN_PARTITIONS = {"TOKEN", "TOKENHASH", "POLICY", "POLICYCOUNTER", "AUTHSTAMP", "META"}
STREAM_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
TRANSACTION_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}


# ---------------------------------------------------------------------- routes
@dataclass
class RouteTable:
    routes: list[tuple[str, str, str]]  # (function, method, path pattern)

    def function_for(self, method: str, path: str) -> str:
        best: tuple[tuple[int, int, int], str] | None = None
        for function, route_method, pattern in self.routes:
            if pattern == "$default" or (route_method not in (method, "ANY")):
                continue
            if not _path_matches(pattern, path):
                continue
            literal = len(re.sub(r"\{[^}]+\}", "", pattern))
            rank = (0 if "+}" in pattern else 1, literal, 1 if route_method == method else 0)
            if best is None or rank > best[0]:
                best = (rank, function)
        if best is not None:
            return best[1]
        return next(function for function, _, pattern in self.routes if pattern == "$default")


def _path_matches(pattern: str, path: str) -> bool:
    regex = re.escape(pattern)
    regex = re.sub(r"\\\{[^}]+\\\+\\\}", ".+", regex)
    regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", regex)
    return re.fullmatch(regex, path) is not None


def routes(template: dict[str, Any]) -> RouteTable:
    found = []
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                found.append((name, event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    return RouteTable(found)


# ---------------------------------------------------------------------- roles
def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_of(translated: dict[str, Any], function: str) -> str:
    role = translated["Resources"][function]["Properties"]["Role"]
    return role["Fn::GetAtt"][0]


def role_statements(translated: dict[str, Any], role: str) -> list[dict[str, Any]]:
    properties = translated["Resources"][role]["Properties"]
    assert not properties.get("ManagedPolicyArns"), f"{role}: managed policies cannot be checked here; use inline policies"
    statements = []
    for policy in properties.get("Policies", []):
        for statement in _listed(policy["PolicyDocument"]["Statement"]):
            statements.append({**statement, "Action": _listed(statement["Action"]), "Resource": _listed(statement["Resource"])})
    return statements


def function_roles(translated: dict[str, Any]) -> dict[str, str]:
    return {name: role_of(translated, name) for name, resource in translated["Resources"].items()
            if resource["Type"] == "AWS::Lambda::Function"}  # fmt: skip


def leading_keys(statement: dict[str, Any]) -> list[str] | None:
    condition = statement.get("Condition", {}).get("ForAllValues:StringLike", {})
    keys = condition.get("dynamodb:LeadingKeys")
    return _listed(keys) if keys is not None else None


def check_least_privilege_statically(translated: dict[str, Any]) -> None:
    roles = {resource_name for resource_name, resource in translated["Resources"].items() if resource["Type"] == "AWS::IAM::Role"}
    for function, role in function_roles(translated).items():
        assert role in roles, (function, role)
    for role in roles:
        statements = role_statements(translated, role)
        assert statements, role
        for statement in statements:
            assert statement["Effect"] == "Allow", (role, statement)
            for action in statement["Action"]:
                assert "*" not in action, (role, action)
                assert not action.startswith(("s3:Delete", "kms:ScheduleKeyDeletion", "kms:Disable")), (role, action)
                assert action not in ("dynamodb:DeleteTable", "dynamodb:Scan", "dynamodb:BatchWriteItem"), (role, action)
            for resource in statement["Resource"]:
                assert resource != "*", (role, statement.get("Sid"))
            services = {action.split(":", 1)[0] for action in statement["Action"]}
            if set(statement["Action"]) <= STREAM_ACTIONS:  # the stream's records, not the table's items
                assert statement["Resource"] == [{"Fn::GetAtt": ["Table", "StreamArn"]}], (role, statement)
                continue
            if "execute-api" in services:  # posting to (and closing) the WebSocket API's connections, nothing else
                assert statement["Action"] == ["execute-api:ManageConnections"], (role, statement)
                assert all("/@connections/" in json.dumps(resource) for resource in statement["Resource"]), (role, statement)
                continue
            if "dynamodb" in services:
                keys = leading_keys(statement)
                assert keys, f"{role}/{statement.get('Sid')}: DynamoDB without dynamodb:LeadingKeys reaches every partition"
                assert "*" not in keys, (role, keys)
                if DYNAMO_WRITES & set(statement["Action"]) and role != "AdminRole":
                    assert not ADMIN_PARTITIONS & set(keys), (role, keys)
                    assert not any(fnmatch.fnmatch(partition, key) for key in keys for partition in ADMIN_PARTITIONS), (role, keys)
            if "kms" in services:
                assert statement.get("Condition") == {"Null": {"kms:EncryptionContext:tessera:key": "false"}}, (role, statement)


# ---------------------------------------------------------------------- the evaluator
@dataclass
class Enforcer:
    """Checks each AWS call against the statements of the role in force; records violations and grants used."""

    statements: dict[str, list[dict[str, Any]]]  # role → statements
    bucket: str
    role: str | None = None
    violations: list[str] = field(default_factory=list)
    used: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))  # role → (Sid, grant)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.role is None:
            return
        service = model.service_model.service_name
        for action, resource, partition, context in self._requests(service, model.name, params):
            self._check(action, resource, partition, context)

    def _requests(self, service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str, str | None, dict]]:
        if service == "dynamodb":
            if operation == "TransactWriteItems":
                out = []
                for item in params["TransactItems"]:
                    (kind, body), = item.items()
                    out.append((f"dynamodb:{TRANSACTION_ACTIONS[kind]}", "table", _pk(body), {}))
                return out
            if operation == "BatchGetItem":  # one request per key read, as IAM evaluates LeadingKeys
                return [(f"dynamodb:{operation}", "table", key["PK"]["S"], {})
                        for table in params["RequestItems"].values() for key in table["Keys"]]  # fmt: skip
            if operation == "Query":
                return [(f"dynamodb:{operation}", "table", params["ExpressionAttributeValues"][":pk"]["S"], {})]
            if operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"):
                return [(f"dynamodb:{operation}", "table", _pk(params), {})]
            return [(f"dynamodb:{operation}", "table", None, {})]
        if service == "s3":
            return [(f"s3:{operation}", f"object:{params.get('Key', '')}", None, {})]
        if service == "kms":
            return [(f"kms:{operation}", "key", None, params.get("EncryptionContext") or params.get("SourceEncryptionContext") or {})]
        if service == "apigatewaymanagementapi":  # IAM names PostToConnection and DeleteConnection so
            return [("execute-api:ManageConnections", "connection", None, {})]
        return [(f"{service}:{operation}", "?", None, {})]

    def _check(self, action: str, resource: str, partition: str | None, context: dict[str, str]) -> None:
        assert self.role is not None
        for statement in self.statements[self.role]:
            if action not in statement["Action"]:
                continue
            if resource.startswith("object:"):
                key = resource.split(":", 1)[1]
                if not any(str(r).endswith("/v/*") or "v/*" in str(r) for r in statement["Resource"]) or not key.startswith("v/"):
                    continue
            if action.startswith("kms:") and "tessera:key" not in context:
                continue
            keys = leading_keys(statement)
            if keys is not None:
                if partition is None:
                    continue
                matched = [key for key in keys if fnmatch.fnmatchcase(partition, key)]
                if not matched:
                    continue
                self.used[self.role].add((statement.get("Sid", ""), matched[0]))
            self.used[self.role].add((statement.get("Sid", ""), action))
            return
        self.violations.append(f"{self.role}: {action} on {partition or resource} is not allowed")

    def unused(self) -> dict[str, list[str]]:
        """Grants (partition patterns, or actions of statements without one) no call made through a role."""
        out: dict[str, list[str]] = {}
        for role, statements in self.statements.items():
            for statement in statements:
                sid = statement.get("Sid", "")
                if sid in ("Logs", "ReadTheStream"):
                    continue  # used by the Lambda service (logs, the stream's event source mapping), not by our code
                grants = (leading_keys(statement) or []) + statement["Action"]
                missing = [grant for grant in grants if (sid, grant) not in self.used[role]]
                if missing:
                    out.setdefault(role, []).extend(f"{sid}:{grant}" for grant in missing)
        return out


def _pk(body: dict[str, Any]) -> str:
    key = body.get("Key") or body.get("Item")
    return key["PK"]["S"]
