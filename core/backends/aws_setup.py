"""Create the aws backend's bucket, table and KMS key, idempotently (``tessera aws init`` and the tests).

The same settings as ``infra/template.yaml`` where the API allows: table with streams, TTL on
``expires_at`` and point-in-time recovery; bucket with versioning, default SSE-KMS, public access
blocked, a TLS-only policy and a lifecycle rule; a symmetric KMS key with rotation and an alias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tessera.core.backends.aws import AwsClients

TTL_ATTRIBUTE = "expires_at"
NONCURRENT_DAYS = 30


@dataclass(frozen=True)
class Provisioned:
    bucket: str
    table: str
    kms_key_id: str  # as configured (an alias, id or ARN)
    kms_key_arn: str
    created: tuple[str, ...]  # which of "bucket", "table", "key" this call created


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def ensure_table(clients: AwsClients, table: str, *, pitr: bool = True) -> bool:
    """True when created. Existing tables get TTL and PITR switched on if they were off."""
    ddb = clients.dynamodb
    created = False
    try:
        ddb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"}, {"AttributeName": "SK", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
            SSESpecification={"Enabled": True},
        )
        created = True
        ddb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except Exception as exc:
        if _code(exc) != "ResourceInUseException":
            raise
    ttl = ddb.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})
    if pitr:
        ddb.update_continuous_backups(
            TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    return created


def ensure_key(clients: AwsClients, key_id: str) -> tuple[str, bool]:
    """(key ARN, created). Only an alias can be created: an id or ARN must name an existing key."""
    kms = clients.kms
    try:
        arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        return arn, False
    except Exception as exc:
        if _code(exc) != "NotFoundException" or not key_id.startswith("alias/"):
            raise
    metadata = kms.create_key(Description="tessera data keys", KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=metadata["KeyId"])
    kms.create_alias(AliasName=key_id, TargetKeyId=metadata["KeyId"])
    return metadata["Arn"], True


def ensure_bucket(
    clients: AwsClients, bucket: str, kms_key_arn: str | None, region: str | None, *, hardened: bool = True, tls_only: bool = True
) -> bool:
    """True when created. ``hardened`` applies versioning, encryption, public access block, lifecycle and
    (with ``tls_only``) the TLS-only policy every time (each is an idempotent put). A plain-HTTP endpoint
    (moto server, LocalStack) enforces that policy too and would refuse every request: skip it there."""
    s3 = clients.s3
    created = False
    try:
        s3.head_bucket(Bucket=bucket)  # us-east-1 answers 200 to re-creating your own bucket: ask first
    except Exception as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        params: dict[str, Any] = {"Bucket": bucket}
        if region and region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**params)
        created = True
    if not hardened:
        return created
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
        },
    )
    if kms_key_arn:
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_arn},
                           "BucketKeyEnabled": True}]
            },
        )
    if tls_only:
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(tls_only_policy(bucket)))
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=lifecycle_rules())
    return created


def tls_only_policy(bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def lifecycle_rules() -> dict[str, Any]:
    """What gc and rewraps leave behind (noncurrent versions, delete markers) goes after 30 days."""
    return {
        "Rules": [
            {
                "ID": "expire-replaced-and-collected-values",
                "Status": "Enabled",
                "Filter": {"Prefix": "v/"},
                "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
            {
                "ID": "remove-expired-delete-markers",
                "Status": "Enabled",
                "Filter": {"Prefix": "v/"},
                "Expiration": {"ExpiredObjectDeleteMarker": True},
            },
        ]
    }


def provision(
    clients: AwsClients,
    *,
    bucket: str,
    table: str,
    kms_key_id: str,
    region: str | None,
    hardened: bool = True,
    tls_only: bool = True,
) -> Provisioned:
    created: list[str] = []
    arn, key_created = ensure_key(clients, kms_key_id)
    if key_created:
        created.append("key")
    if ensure_table(clients, table, pitr=hardened):
        created.append("table")
    if ensure_bucket(clients, bucket, arn, region, hardened=hardened, tls_only=tls_only):
        created.append("bucket")
    return Provisioned(bucket, table, kms_key_id, arn, tuple(created))
