"""``KeyService`` on AWS KMS (``KmsKeyService``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tessera.core.backends.aws.calls import AwsClients, CallCounter, ClientFailure, call_aws, shared_clients
from tessera.core.errors import IntegrityError
from tessera.core.ports import DataKey

if TYPE_CHECKING:
    from tessera.core.settings import Settings


class KmsKeyService:
    """``KeyService`` on AWS KMS: a fresh data key per write (``GenerateDataKey``), bound to the value's
    (namespace, env, key, version) by the encryption context; ``wrap_data_key`` re-wraps for key rotation.

    Which KMS key new writes use: ``active_key_source()`` when given (the composition root passes one that
    reads the store's meta ``active_kms_key_id``, set by ``tessera keys rotate --kms-key-id``), re-read every
    ``refresh_seconds`` so every node and Lambda follows a rotation; otherwise the configured ``key_id``.
    Decrypt always names the key recorded in the envelope, so older keys keep working until retired.

    >>> # keys = KmsKeyService(clients.kms, "alias/tessera", clients.calls)
    >>> # keys.generate_data_key({"tessera:key": "default/default/db.host/1"})   # → DataKey(key_id=...)
    """

    def __init__(
        self,
        kms: Any,
        key_id: str = "alias/tessera",
        calls: CallCounter | None = None,
        active_key_source: Callable[[], str | None] | None = None,
        refresh_seconds: float = 10.0,
    ) -> None:
        self.kms = kms
        self.key_id = key_id
        self.calls = calls if calls is not None else CallCounter()
        self.active_key_source = active_key_source
        self.refresh_seconds = refresh_seconds
        self._active: tuple[float, str] | None = None  # (re-read after, key id) from active_key_source
        self._arns: dict[str, str] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, clients: AwsClients | None = None, active_key_source: Callable[[], str | None] | None = None
    ) -> KmsKeyService:
        clients = clients or shared_clients(settings.region, settings.endpoint_url)
        return cls(clients.kms, settings.kms_key_id, clients.calls, active_key_source)

    def current_key_id(self) -> str:
        """The key (as configured or named by ``tessera keys rotate``: ARN, id or alias) new writes use."""
        if self.active_key_source is None:
            return self.key_id
        now = time.monotonic()
        cached = self._active
        if cached is None or cached[0] <= now:
            cached = (now + self.refresh_seconds, self.active_key_source() or self.key_id)
            self._active = cached
        return cached[1]

    @property
    def active_key_id(self) -> str:
        """The active key's ARN, as KMS reports it on every data key (and so as envelopes and status name it)."""
        return self.resolve_key_arn(self.current_key_id())

    def resolve_key_arn(self, key_id: str) -> str:
        if key_id not in self._arns:
            self._arns[key_id] = self._kms("DescribeKey", KeyId=key_id)["KeyMetadata"]["Arn"]
        return self._arns[key_id]

    def _kms(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return call_aws(self.calls, "kms", self.kms, operation, handled, **params)

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        response = self._kms("GenerateDataKey", KeyId=self.current_key_id(), KeySpec="AES_256", EncryptionContext=dict(context))
        return DataKey(response["KeyId"], response["Plaintext"], response["CiphertextBlob"])

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        try:
            response = self._kms(
                "Decrypt",
                # NotFoundException: the envelope names a KMS key that does not exist — a damaged or forged key id.
                frozenset({"InvalidCiphertextException", "IncorrectKeyException", "NotFoundException"}),
                KeyId=key_id,
                CiphertextBlob=wrapped,
                EncryptionContext=dict(context),
            )
        except ClientFailure as failure:
            raise IntegrityError("stored data key failed its integrity check") from failure
        return response["Plaintext"]

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        response = self._kms("Encrypt", KeyId=self.current_key_id(), Plaintext=plaintext_key, EncryptionContext=dict(context))
        return response["KeyId"], response["CiphertextBlob"]

    def rewrap_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        """Re-wrap under the active key inside KMS (``ReEncrypt``): the plaintext data key is never sent back
        to KMS, and KMS checks the source encryption context on the way. Used by ``tessera keys rewrap``."""
        try:
            response = self._kms(
                "ReEncrypt",
                frozenset({"InvalidCiphertextException", "IncorrectKeyException"}),
                CiphertextBlob=wrapped,
                SourceKeyId=key_id,
                SourceEncryptionContext=dict(context),
                DestinationKeyId=self.current_key_id(),
                DestinationEncryptionContext=dict(context),
            )
        except ClientFailure as failure:
            raise IntegrityError("stored data key failed its integrity check") from failure
        return response["KeyId"], response["CiphertextBlob"]
