"""All settings in one place, read from ``TESSERA_*`` variables (or passed by ``tessera serve``).

Unsafe or incomplete combinations are refused at start, not discovered at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Settings(BaseModel):
    # A refused setting must not echo its input: it may be the root token or the master key.
    model_config = ConfigDict(hide_input_in_errors=True)

    backend: Literal["local", "aws"] = "local"
    data_dir: Path = Path(".tessera")
    root_token: str | None = Field(default=None, repr=False)
    # The root token's SHA-256 (hex), pinned by the deployment (infra/template.yaml's RootTokenSha256): the
    # functions accept that root token without the string ever reaching them, and never write the digest.
    root_token_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    dev: bool = False
    master_key: str | None = Field(default=None, repr=False)  # TESSERA_MASTER_KEY: overrides the keyring file
    # aws backend
    bucket: str | None = None
    table: str | None = None
    kms_key_id: str = "alias/tessera"
    region: str | None = None
    endpoint_url: str | None = None
    # The WebSocket API's Management endpoint (https://<api>.execute-api.<region>.amazonaws.com/<stage>): where the
    # stream notifier posts events (infra/template.yaml sets it on the live function).
    ws_endpoint: str | None = None
    # limits
    value_cache_entries: int = 10_000
    max_watch_seconds: float = 60.0  # the contract's clamp; 25 on Lambda, where API Gateway ends requests at 30 s
    change_log_retention: int = 100_000
    # Application limits (issue 13 §3; the table is in docs/reliability.md). Per token; per client address before
    # a token is known (a WebSocket not yet authenticated). 429 too_many_requests with Retry-After when reached.
    max_long_polls: int = Field(default=4096, ge=1)  # TESSERA_MAX_LONG_POLLS: /watch requests held at once
    max_websockets: int = Field(default=1024, ge=1)  # TESSERA_MAX_WEBSOCKETS: open /ws sockets
    max_subscriptions: int = Field(default=16384, ge=1)  # TESSERA_MAX_SUBSCRIPTIONS: over all of a token's sockets
    # TESSERA_REQUEST_DEADLINE: seconds a request may run before its commit point (503 deadline_exceeded); watches
    # and imports keep their own bounds (max_watch_seconds; per-key commits and the body limit)
    request_deadline: float = Field(default=30.0, gt=0)
    # TESSERA_IMPORT_DEADLINE: seconds after which a batched import (aws) starts no new transaction; the keys left
    # out are named in its errors as deadline_exceeded (24: API Gateway answers 503 at 29 s; raise it for serve)
    import_deadline: float = Field(default=24.0, gt=0)
    docs: bool = True  # /docs and /openapi.json (public: the schema is no secret); `tessera serve --no-docs`, TESSERA_DOCS=off
    # Retention, by time: the aws backend's TTL (ChangeLogRetentionDays / AuditRetentionDays in the template);
    # the embedded store removes audit records older than audit_retention_days, leaving a checkpoint that
    # `tessera audit verify` starts from.
    change_log_retention_days: int = Field(default=30, ge=1)
    audit_retention_days: int = Field(default=90, ge=1)

    # audit and access control
    audit_enabled: bool = True  # TESSERA_AUDIT=off: only for the benchmark baseline, never in production
    # each record also as a JSON log line on stdout: on Lambda (stdout is CloudWatch Logs) by default, else when asked
    audit_stdout: bool = False
    auth_failure_limit: int = 100  # failed token checks from one address per window before it is damped (429)
    auth_failure_window: float = 60.0
    auth_penalty: float = 30.0

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.backend == "aws" and not (self.bucket and self.table):
            raise ValueError("the aws backend needs TESSERA_BUCKET and TESSERA_TABLE")
        if self.root_token is not None and len(self.root_token) < 16:
            raise ValueError("a root token must be at least 16 characters long")
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        mapping = {
            "backend": "TESSERA_BACKEND",
            "data_dir": "TESSERA_DATA_DIR",
            "root_token": "TESSERA_ROOT_TOKEN",
            "root_token_sha256": "TESSERA_ROOT_TOKEN_SHA256",
            "master_key": "TESSERA_MASTER_KEY",
            "bucket": "TESSERA_BUCKET",
            "table": "TESSERA_TABLE",
            "kms_key_id": "TESSERA_KMS_KEY_ID",
            "change_log_retention": "TESSERA_CHANGE_LOG_RETENTION",
            "change_log_retention_days": "TESSERA_CHANGE_LOG_RETENTION_DAYS",
            "audit_retention_days": "TESSERA_AUDIT_RETENTION_DAYS",
            "region": "AWS_REGION",
            "endpoint_url": "AWS_ENDPOINT_URL",
            "ws_endpoint": "TESSERA_WS_ENDPOINT",
        }
        for field_name, variable in mapping.items():
            if env.get(variable):
                values[field_name] = env[variable]
        if not values.get("region") and env.get("AWS_DEFAULT_REGION"):
            values["region"] = env["AWS_DEFAULT_REGION"]
        if env.get("AWS_LAMBDA_FUNCTION_NAME"):
            values["max_watch_seconds"] = 25.0
        if env.get("TESSERA_MAX_WATCH_SECONDS"):
            values["max_watch_seconds"] = env["TESSERA_MAX_WATCH_SECONDS"]
        if env.get("TESSERA_DEV") in ("1", "true", "yes"):
            values["dev"] = True
        if env.get("TESSERA_DOCS"):
            values["docs"] = env["TESSERA_DOCS"].lower() not in ("off", "0", "false", "no")
        if env.get("TESSERA_AUDIT"):
            values["audit_enabled"] = env["TESSERA_AUDIT"].lower() not in ("off", "0", "false", "no")
        stdout = env.get("TESSERA_AUDIT_STDOUT") or ("on" if env.get("AWS_LAMBDA_FUNCTION_NAME") else "off")
        values["audit_stdout"] = stdout.lower() in ("on", "1", "true", "yes")
        for field_name, variable in (
            ("auth_failure_limit", "TESSERA_AUTH_FAILURE_LIMIT"),
            ("auth_failure_window", "TESSERA_AUTH_FAILURE_WINDOW"),
            ("auth_penalty", "TESSERA_AUTH_PENALTY"),
            ("max_long_polls", "TESSERA_MAX_LONG_POLLS"),
            ("max_websockets", "TESSERA_MAX_WEBSOCKETS"),
            ("max_subscriptions", "TESSERA_MAX_SUBSCRIPTIONS"),
            ("request_deadline", "TESSERA_REQUEST_DEADLINE"),
            ("import_deadline", "TESSERA_IMPORT_DEADLINE"),
        ):
            if env.get(variable):
                values[field_name] = env[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
