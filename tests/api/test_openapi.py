"""The OpenAPI document declares the contract (issue 13 §1): every operation's parameters, request body, every
status the contract names with the error model, the bearer scheme, ``/ws`` in prose; ``/docs`` and
``/openapi.json`` are public unless ``tessera serve --no-docs``. Real responses are checked against it by
schemathesis (``test_fuzz.py``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tessera.handlers.openapi import OPERATIONS
from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_openapi-root-token-0123456789abcd"


@pytest.fixture
def document(client):
    response = TestClient(client.app).get("/openapi.json")  # no token: the schema is public
    assert response.status_code == 200
    return response.json()


def operations(document):
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


def test_every_route_is_declared_with_its_bodies_statuses_and_security(document):
    declared = operations(document)
    assert set(declared) == set(OPERATIONS)  # and building fails on a route the table lacks
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a Tessera token (`tsr_...`)"}}
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas  # FastAPI's 422 is never sent
    for (method, path), op in declared.items():
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert {"400", "401", "403", "404", "429", "503"} <= set(responses) or path in ("/health", "/ready"), where
        for status, response in responses.items():
            assert response["headers"]["X-Request-Id"]["required"] is True, (where, status)
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, where
        if "422" in responses:
            assert method in ("put", "post", "delete"), where  # idempotency_key_reused only
        assert op["security"] == ([] if path in ("/health", "/ready") else [{"bearer": []}]), where
        if method in ("put", "post") and path not in ("/config/rollback/{key}",):
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas, where
        for parameter in op.get("parameters", []):
            assert "schema" in parameter and parameter["schema"].get("type"), (where, parameter)
    assert {"200", "201"} <= set(declared[("put", "/config/{key}")]["responses"])
    assert "304" in declared[("get", "/config/{key}")]["responses"]
    assert "204" in declared[("delete", "/auth/tokens/{token_id}")]["responses"]
    assert "410" in declared[("get", "/watch")]["responses"]
    assert "Retry-After" in declared[("get", "/watch")]["responses"]["429"]["headers"]
    links = declared[("put", "/config/{key}")]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} >= {"config_read", "config_history", "config_rollback"}
    assert "/ws" in document["info"]["description"] and '{"type": "auth"' in document["info"]["description"]


def test_error_and_body_schemas_say_what_is_sent(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["Error"]["required"]) == {"error"}
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "request_id"}
    assert schemas["WriteRequest"]["required"] == ["value"] and schemas["WriteRequest"]["additionalProperties"] is False
    assert {"key", "value", "namespace", "env"} <= set(schemas["ConfigRead"]["required"])


def test_docs_are_public_and_go_with_no_docs(tmp_path, client):
    anon = TestClient(client.app)
    assert anon.get("/docs").status_code == 200 and "swagger" in anon.get("/docs").text.lower()
    container = build(Settings(data_dir=tmp_path / "closed", root_token=ROOT_TOKEN, docs=False))
    try:
        with TestClient(create_app(container)) as closed:
            for path in ("/docs", "/openapi.json"):
                response = closed.get(path)
                assert response.status_code == 404 and response.json()["error"]["code"] == "no_route"
    finally:
        container.close()


@pytest.mark.slow
def test_tessera_serve_no_docs(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=ROOT_TOKEN, extra_args=["--no-docs"]).start()
    try:
        with server.client() as client:
            assert client.get("/openapi.json").status_code == 404
            assert client.get("/health").status_code == 200
    finally:
        server.stop()
