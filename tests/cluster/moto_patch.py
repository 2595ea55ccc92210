"""moto's DynamoDB writes, made to hold load and to be atomic under the threaded server.

moto 5.2's ``transact_write_items`` deep-copies every table a transaction touches (its rollback snapshot),
once per item: each commit costs time and memory proportional to everything written so far (STACK-NOTES,
issue 11). Its rollback also puts the whole copied table back, undoing any write another thread made
meanwhile. The fix here snapshots only the items the transaction touches (and the length of each table's
stream), and runs every write under one lock per backend.

A second leak, not in the transaction: moto keeps every model object it ever made (each ``Item``, including
every copy made for a rollback, an update's old image or a query's result, each stream record, each S3
key) in ``instances_tracked`` lists, for its ``/moto-api/data.json`` dashboard and S3's reset. Nothing is
ever freed. :func:`install` makes those lists weak: live objects are still listed, garbage is collected.
It also keeps each DynamoDB stream record compressed until it is read (a record with both images is a tree
of small dicts, about half of what a commit leaves in memory); readers see the same records. And shard iterators
expire after 15 minutes as on AWS (``ExpiredIteratorException``): moto keeps every iterator it hands out, one
more per ``GetRecords`` call, so a stream poller grew the emulator without bound.

The two functions below are, character for character, the ones in ``docs/upstream/moto-transact-rollback.diff``
(a patch against moto's source, with a test that fails without it); ``tests/cluster/test_moto_patch.py``
holds them equal. :func:`install` applies them to the installed moto, in the emulator process only.
"""

import copy
import functools
import pickle
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from moto.core.common_models import BaseModel
from moto.core.exceptions import JsonRESTError
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import StreamShard, Table

WriteMethod = TypeVar("WriteMethod", bound=Callable[..., Any])
WRITES = ("put_item", "update_item", "delete_item", "execute_statement")

# ---------------------------------------------------------------- as in the upstream diff (keep identical)
def one_write_at_a_time(method: WriteMethod) -> WriteMethod:
    """Writes take the backend's write lock (in server mode requests run in threads):
    a transaction is atomic to every other write, and its rollback never undoes one."""

    @functools.wraps(method)
    def locked(self: "DynamoDBBackend", *args: Any, **kwargs: Any) -> Any:
        with self.write_lock:
            return method(self, *args, **kwargs)

    return cast(WriteMethod, locked)


@one_write_at_a_time
def transact_write_items(self, transact_items: list[dict[str, Any]]) -> None:
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    # In case any of the writes fail: each item as it was before this transaction
    # touched it, and how long each table's stream was. Copying only these keeps
    # a transaction's cost independent of the size of its tables.
    original_items: list[
        tuple[Table, DynamoType, DynamoType | None, Item | None]
    ] = []
    original_streams: dict[str, tuple[StreamShard, int]] = {}

    def remember(table_name: str, key: dict[str, Any]) -> None:
        table = self.get_table(table_name)
        hash_value, range_value = self.get_keys_value(table, key)
        stream = table.stream_shard
        if stream is not None and table.name not in original_streams:
            original_streams[table.name] = (stream, len(stream.items))
        item = table.get_item(hash_value, range_value)
        original_items.append(
            (table, hash_value, range_value, copy.deepcopy(item))
        )

    def rollback() -> None:
        for table, hash_value, range_value, item in reversed(original_items):
            if range_value is None:
                if item is None:
                    table.items.pop(hash_value, None)
                else:
                    table.items[hash_value] = item
            elif item is None:
                table.items.get(hash_value, {}).pop(range_value, None)
            else:
                table.items[hash_value][range_value] = item
        for stream, length in original_streams.values():
            # A cancelled transaction leaves no stream records
            del stream.items[length:]

    target_items: set[tuple[str, str]] = set()

    def check_unicity(table_name: str, key: dict[str, Any]) -> None:
        item = (str(table_name), str(dict(sorted(key.items()))))
        if item in target_items:
            raise MultipleTransactionsException()
        target_items.add(item)

    errors: list[
        tuple[str, str, dict[str, Any]] | tuple[None, None, None]
    ] = []  # [(Code, Message, Item), ..]
    for item in transact_items:
        original_item: dict[str, Any] | None = None
        # Check transact writes are not performing multiple operations on the same item
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException

        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")

            table_name = op["TableName"]
            condition_expression = op.get("ConditionExpression")
            expression_attribute_names = op.get("ExpressionAttributeNames")
            expression_attribute_values = op.get("ExpressionAttributeValues")
            return_values_on_condition_check_failure = op.get(
                "ReturnValuesOnConditionCheckFailure"
            )

            if op_type == "Put":
                attrs = op["Item"]
                table = self.get_table(table_name)
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]

            check_unicity(table_name, key)

            remember(table_name, key)
            current = self.get_item(table_name, key)
            if condition_expression is not None:
                condition_op = get_filter_expression(
                    condition_expression,
                    expression_attribute_names,
                    expression_attribute_values,
                )
                if not condition_op.expr(current):
                    if (
                        return_values_on_condition_check_failure == "ALL_OLD"
                        and current
                    ):
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)

            if op_type == "Put":
                attrs = op["Item"]
                self.put_item(
                    table_name,
                    attrs,
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Delete":
                self.delete_item(
                    table_name,
                    key,
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Update":
                update_expression = op["UpdateExpression"]
                self.update_item(
                    table_name,
                    key,
                    update_expression=update_expression,
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            # Rollback to the original state, and reraise the error
            rollback()
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))  # type: ignore
        except Exception as e:  # noqa: E722 Do not use bare except
            # For other exceptions, capture their details
            errors.append((type(e).__name__, str(e), original_item))  # type: ignore

    if any(code is not None for code, _, _ in errors):
        # Rollback to the original state, and reraise the errors
        rollback()
        raise TransactionCanceledException(errors)


# ---------------------------------------------------------------- weak instance tracking
class WeakInstances:
    """What moto's ``instances_tracked`` lists are used as (append, iterate, len), holding weak references.
    Objects that cannot be weakly referenced are held strongly, as before."""

    def __init__(self, existing: Any = ()) -> None:
        self._refs: dict[int, Any] = {}
        self._strong: list[Any] = []
        self._callback = self._forget  # one bound method for all the references
        for instance in existing:
            self.append(instance)

    def append(self, instance: Any) -> None:
        try:
            ref = weakref.ref(instance, self._callback)
        except TypeError:
            self._strong.append(instance)
            return
        self._refs[id(ref)] = ref

    def _forget(self, ref: Any) -> None:
        self._refs.pop(id(ref), None)

    def __iter__(self) -> Iterator[Any]:
        live = [ref() for ref in list(self._refs.values())]
        yield from (instance for instance in live if instance is not None)
        yield from list(self._strong)

    def __len__(self) -> int:
        return len(self._refs) + len(self._strong)


def _track_weakly(cls: Any, *args: Any, **kwargs: Any) -> Any:
    tracked = cls.__dict__.get("instances_tracked")
    if not isinstance(tracked, WeakInstances):
        cls.instances_tracked = WeakInstances(tracked or ())
    return _original["BaseModel.__new__"](cls, *args, **kwargs)


# ---------------------------------------------------------------- compact stream records
class CompactStreamRecord:
    """A ``StreamRecord`` kept as compressed pickle; ``to_json()`` and ``record`` give the same dict back."""

    __slots__ = ("_data",)

    def __init__(self, record: dict[str, Any]) -> None:
        self._data = zlib.compress(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL), 1)

    @property
    def record(self) -> dict[str, Any]:
        return pickle.loads(zlib.decompress(self._data))  # noqa: S301 - our own bytes, made just above

    def to_json(self) -> dict[str, Any]:
        return self.record


def _add_compactly(self: StreamShard, old: Any, new: Any) -> None:
    before = len(self.items)
    _original["StreamShard.add"](self, old, new)
    if len(self.items) == before + 1:  # (an attached Lambda event source may have taken and cleared them)
        self.items[-1] = CompactStreamRecord(self.items[-1].record)  # type: ignore[call-overload]


# ---------------------------------------------------------------- shard iterators expire
ITERATOR_LIFETIME = 15 * 60.0  # seconds, as DynamoDB Streams documents
clock: Callable[[], float] = time.monotonic  # tests move it


def _remember_newest_iterator(backend: Any) -> None:
    """Note when the iterator a call just registered was made; forget the ones past their lifetime."""
    births: deque[tuple[float, str]] = backend.__dict__.setdefault("iterator_births", deque())
    now = clock()
    if backend.shard_iterators:
        births.append((now, next(reversed(backend.shard_iterators))))
    while births and births[0][0] < now - ITERATOR_LIFETIME:
        _, arn = births.popleft()
        backend.shard_iterators.pop(arn, None)


def _get_shard_iterator(self: Any, *args: Any, **kwargs: Any) -> Any:
    iterator = _original["DynamoDBStreamsBackend.get_shard_iterator"](self, *args, **kwargs)
    _remember_newest_iterator(self)
    return iterator


def _get_records(self: Any, iterator_arn: str, limit: int) -> Any:
    if iterator_arn not in self.shard_iterators:
        raise JsonRESTError("ExpiredIteratorException", "Iterator expired or unknown")
    result = _original["DynamoDBStreamsBackend.get_records"](self, iterator_arn, limit)
    _remember_newest_iterator(self)
    return result


# ---------------------------------------------------------------- installing it
_original: dict[str, Any] = {}


def install() -> None:
    """Patch the installed moto (idempotent): item-level rollback, and every write under one lock.

    Example::

        from tests.cluster import moto_patch
        moto_patch.install()   # before serving requests (in-process tests pair it with uninstall())
    """
    if _original:
        return
    _original.update({name: getattr(DynamoDBBackend, name) for name in (*WRITES, "transact_write_items")})
    _original["BaseModel.__new__"] = BaseModel.__dict__["__new__"].__func__  # a class's __new__ is a staticmethod
    BaseModel.__new__ = staticmethod(_track_weakly)  # type: ignore[assignment]
    _original["StreamShard.add"] = StreamShard.add
    StreamShard.add = _add_compactly  # type: ignore[method-assign]
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    for name, patch in (("get_shard_iterator", _get_shard_iterator), ("get_records", _get_records)):
        _original[f"DynamoDBStreamsBackend.{name}"] = getattr(DynamoDBStreamsBackend, name)
        setattr(DynamoDBStreamsBackend, name, patch)
    _original["write_lock"] = getattr(DynamoDBBackend, "write_lock", None)
    # Upstream creates the lock in ``__init__``; here one class-wide lock serves every account and region.
    DynamoDBBackend.write_lock = threading.RLock()  # type: ignore[attr-defined]
    for name in WRITES:
        setattr(DynamoDBBackend, name, one_write_at_a_time(_original[name]))
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def uninstall() -> None:
    """Put moto back as it was (for tests that compare patched and unpatched behaviour)."""
    if not _original:
        return
    lock = _original.pop("write_lock")
    BaseModel.__new__ = staticmethod(_original.pop("BaseModel.__new__"))  # type: ignore[assignment]
    StreamShard.add = _original.pop("StreamShard.add")  # type: ignore[method-assign]
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    for name in ("get_shard_iterator", "get_records"):
        setattr(DynamoDBStreamsBackend, name, _original.pop(f"DynamoDBStreamsBackend.{name}"))
    for name, method in _original.items():
        setattr(DynamoDBBackend, name, method)
    if lock is None:
        del DynamoDBBackend.write_lock  # type: ignore[attr-defined]
    else:
        DynamoDBBackend.write_lock = lock  # type: ignore[attr-defined]
    _original.clear()
