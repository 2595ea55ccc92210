"""Shared helpers of the secrets tests: raw storage bytes, and every form a canary could leak in."""

from __future__ import annotations

import base64
import json
from pathlib import Path


def leak_forms(canary: str) -> list[bytes]:
    """The canary as plaintext, JSON-escaped, base64 (several alignments), hex, and UTF-16."""
    raw = canary.encode()
    forms = [raw, json.dumps(canary).encode(), raw.hex().encode(), canary.encode("utf-16-le")]
    for shift in range(3):
        chunk = base64.b64encode(b"\0" * shift + raw)[4:-4]  # the stable middle of each alignment
        forms.append(chunk)
    return forms


def find_leaks(blob: bytes, canary: str) -> list[bytes]:
    return [form for form in leak_forms(canary) if form in blob]


def sqlite_files(data_dir: Path) -> dict[str, bytes]:
    """The embedded store's database file and its WAL and shared-memory files, whatever exists now."""
    return {p.name: p.read_bytes() for p in Path(data_dir).iterdir() if p.name.startswith("tessera.db")}


def raw_storage(store) -> dict[str, bytes]:
    """Every byte a backend keeps, by where it lives: the SQLite files (incl. WAL), or every S3 object
    (all versions, if the bucket is versioned) and every DynamoDB item of the aws backend."""
    if hasattr(store, "path"):
        return sqlite_files(Path(store.path).parent)
    blobs: dict[str, bytes] = {}
    s3, bucket = store.s3, store.bucket
    token: dict = {}
    while True:
        page = s3.list_object_versions(Bucket=bucket, **token)
        for entry in page.get("Versions", []):
            body = s3.get_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])["Body"].read()
            blobs[f"s3://{bucket}/{entry['Key']}?v={entry['VersionId']}"] = body
        if not page.get("IsTruncated"):
            break
        token = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    scan: dict = {"TableName": store.table, "ConsistentRead": True}
    while True:
        page = store.dynamodb.scan(**scan)
        for item in page["Items"]:
            blobs[f"ddb:{item['PK']['S']}|{item['SK']['S']}"] = repr(item).encode() + b"".join(
                value["B"] for value in item.values() if "B" in value
            )
        if "LastEvaluatedKey" not in page:
            break
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return blobs
