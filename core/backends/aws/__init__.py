"""The aws backend: immutable value objects in S3, heads/versions/revisions/change log in one DynamoDB table,
data keys from KMS. Layout and commit protocol: ``docs/aws.md``.

Modules, each with one job:

- ``calls``: boto3 clients, counted calls (``CallCounter``), error translation, the ``Table`` helper;
- ``items``: the table's key layout and how versions and changes are encoded as items;
- ``commit``: the items of one commit transaction and what a cancellation means;
- ``store``: ``AwsStore`` (reads, the commit, environments, meta);
- ``idempotency``: ``Idempotency-Key`` claims (``IDEM#`` items), marked inside the commit's transaction;
- ``maintenance``: key rotation's walk and swap, garbage collection of orphaned objects;
- ``kms``: ``KmsKeyService``.

Tokens, policies and the audit log live in ``core/backends/aws_access.py``; creating the resources in
``core/backends/aws_setup.py``. Adapters take their clients as arguments and do no I/O at import
(``AwsClients.create`` builds them), and importing this package imports no boto3.

>>> from tessera.core.backends.aws import AwsStore, KmsKeyService   # the two adapters the composition root uses
"""

from tessera.core.backends.aws.calls import AwsClients, CallCounter, ClientFailure, Table, call_aws, shared_clients
from tessera.core.backends.aws.items import pad, parse_object_key, version_pk
from tessera.core.backends.aws.kms import KmsKeyService
from tessera.core.backends.aws.maintenance import OrphanReport
from tessera.core.backends.aws.store import AwsStore

__all__ = [
    "AwsClients",
    "AwsStore",
    "CallCounter",
    "ClientFailure",
    "KmsKeyService",
    "OrphanReport",
    "Table",
    "call_aws",
    "pad",
    "parse_object_key",
    "shared_clients",
    "version_pk",
]
