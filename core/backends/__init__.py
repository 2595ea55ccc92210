"""Adapters that implement ``core.ports``: SQLite (embedded), AWS (S3 + DynamoDB + KMS), the local keyring."""
