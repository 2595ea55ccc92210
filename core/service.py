"""The config service: reads with inheritance (and their explanation), versioned writes under compare-and-set,
history, rollback, import/export, environments, diff and promote. Every rule of the contract's ``/config`` part lives here.

>>> # service = ConfigService(store, keys)
>>> # service.put(ROOT, Scope(), "database.host", "db.internal")   # → WriteResult(created=True, ...)
"""

from __future__ import annotations

import bisect
import builtins  # ``list`` inside ConfigService names its method
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cachetools import LRUCache

from tessera.core import crypto
from tessera.core.access import Authorizer, RootOnly
from tessera.core.deadline import check as check_deadline
from tessera.core.errors import (
    Forbidden,
    InvalidRequest,
    InvalidRollback,
    InvalidValue,
    NotFound,
    PayloadTooLarge,
    SecretFlagImmutable,
    TesseraError,
    ValueTooLarge,
    VersionConflict,
    VersionsMoved,
)
from tessera.core.formats import MAX_VALUE_DEPTH, flatten, value_depth
from tessera.core.model import (
    DEFAULT,
    Action,
    Change,
    Environment,
    Principal,
    Scope,
    Version,
    parse_key,
    parse_name,
    parse_prefix,
    utcnow,
)
from tessera.core.ports import ChangeAuditor, KeyService, VersionStore
from tessera.core.watch import ChangeFeed, ChangeNotifier

MAX_VALUE_BYTES = 64 * 1024
MAX_HISTORY_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1000
COMMIT_ATTEMPTS = 20
IMPORT_WORKERS = 32  # an import on a batching store (aws): reads, decryptions and seals in flight at once
IMPORT_SECONDS = 24.0  # ... and no new transaction starts after this (API Gateway answers 503 at 29 s)
ENV_CACHE_SECONDS = 1.0  # stores without a read stamp (aws): how long a node trusts its copy of the environments


def encode_value(value: Any) -> bytes:
    """Canonical JSON of a value: equal values encode equally (``1`` ≠ ``1.0`` ≠ ``true``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def check_value(value: Any) -> bytes:
    """Refuse what the contract refuses (objects, nesting past 64, over 64 KiB encoded); the cheap checks first."""
    if isinstance(value, dict):
        raise InvalidValue("a value may not be a JSON object: write its leaves as keys, or use import")
    if value_depth(value) > MAX_VALUE_DEPTH:
        raise InvalidValue(f"a value may nest at most {MAX_VALUE_DEPTH} levels deep")
    try:
        encoded = encode_value(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidValue("value is not representable as JSON") from exc
    if len(encoded) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"value is larger than {MAX_VALUE_BYTES} bytes encoded")
    return encoded


@dataclass(frozen=True)
class ReadResult:
    key: str
    value: Any
    scope: Scope
    resolved_env: str | None
    version: Version | None  # None for a subtree
    redacted: list[str] = field(default_factory=list)
    leaves: tuple[tuple[str, int, str], ...] = ()  # (key, version, env) of a subtree's leaves
    # Where the HTTP layer may keep what it rendered of this (immutable) result: shared by every read served
    # from the same cached resolution, dropped with it.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def etag(self) -> str:
        """Identifies (namespace, key, version, resolved env) — for a subtree, every leaf and redaction."""
        if self.version is not None:
            text = f"{self.scope.namespace}\x00{self.key}\x00{self.version.version}\x00{self.resolved_env}"
        else:
            parts = [f"{k}\x01{v}\x01{e}" for k, v, e in self.leaves] + [f"\x02{r}" for r in self.redacted]
            text = f"{self.scope.namespace}\x00{self.key}\x00" + "\x00".join(parts)
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class WriteResult:
    version: Version
    created: bool
    changed: bool = True


@dataclass(frozen=True)
class HistoryEntry:
    version: Version
    value: Any = None
    has_value: bool = False


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int
    errors: list[dict[str, str]]


@dataclass(frozen=True)
class PromoteResult:
    promoted: list[Version]  # the new versions in the target env, in key order
    unchanged: int  # keys considered that already held the same value in both


@dataclass(frozen=True)
class ExplainLayer:
    """What one environment of a read's chain holds for a key: ``value``, ``absent``, ``deleted`` (its tombstone is
    ``version``), or ``hidden`` (the caller may not read the key there). ``value`` only for a plain value."""

    env: str
    state: str
    version: Version | None = None
    value: Any = None
    has_value: bool = False


@dataclass(frozen=True)
class ResolvedLeaf:
    version: Version
    env: str
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # see ReadResult.memo


@dataclass(frozen=True)
class ListPage:
    leaves: list[ResolvedLeaf]
    next: str | None  # pass as ``after`` for the next page; None on the last one


ValueKey = tuple[Scope, str, int]


def _entry_size(entry: tuple[Any, int]) -> int:
    return entry[1]


class _CountedLRU(LRUCache[ValueKey, tuple[Any, int]]):
    """cachetools' LRU bounded by the entries' sizes (``maxsize`` bytes) and by their count too."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(max_bytes, getsizeof=_entry_size)
        self.max_entries = max_entries

    def __setitem__(self, key: ValueKey, value: tuple[Any, int]) -> None:
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem()


class ValueCache:
    """Bounded LRU of decrypted values by (scope, key, version): versions are immutable, so entries never go stale.

    Bounded by count and by the values' encoded size (64 KiB values × 10,000 entries would be 640 MB); a value
    larger than the whole byte bound is not cached. cachetools is not thread-safe: every use holds the lock.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries = _CountedLRU(max_entries, max_bytes)
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return int(self._entries.currsize)

    def get(self, cache_key: ValueKey) -> tuple[bool, Any]:
        with self._lock:
            try:
                entry = self._entries[cache_key]  # one lookup (``get`` would make two); a miss then decrypts
            except KeyError:
                return False, None
        return True, entry[0]

    def put(self, cache_key: ValueKey, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            self._entries[cache_key] = (value, size)


class ReadCache:
    """Resolved reads (which version of a key an env sees, which leaves a prefix holds), exactly coherent with
    the store: every lookup first compares the store's read stamp (``VersionStore.read_stamp``, one cheap read)
    with the stamp the entries were made under, and drops them all when it moved — whichever process or node
    committed. A read after an acknowledged write therefore always sees it.

    Entries made by a reader that validated an older stamp are refused (``generation``), so a slow reader can
    never put something stale back after a newer stamp cleared the cache. Stores without a read stamp (aws,
    where the head read is the consistent read) get no cache: ``enabled`` is False.

    Deliberately not a cachetools cache like the others: it is emptied whole (a stamp change, or full), never
    evicted entry by entry, and a hit is one lock-free ``dict.get`` on the hottest path; an LRU's bookkeeping
    per hit would buy nothing here.
    """

    def __init__(self, store: Any, max_entries: int = 50_000) -> None:
        self._read_stamp: Callable[[], object] | None = getattr(store, "read_stamp", None)
        self.enabled = self._read_stamp is not None
        self.max_entries = max_entries
        self._stamp: object = None
        self.generation = 0
        self._entries: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def validate(self) -> int:
        """Check the stamp (clearing on a change); returns the generation that fills must present."""
        assert self._read_stamp is not None
        stamp = self._read_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._entries = {}
                    self._stamp = stamp
                    self.generation += 1
        return self.generation

    def get(self, cache_key: tuple[Any, ...]) -> Any:
        return self._entries.get(cache_key, _MISSING)

    def put(self, cache_key: tuple[Any, ...], generation: int, value: Any) -> None:
        with self._lock:
            if generation != self.generation:
                return  # made under an older stamp: might be stale
            if len(self._entries) >= self.max_entries:
                self._entries = {}
            self._entries[cache_key] = value

    def clear(self) -> None:
        """This node just committed: nothing cached survives (the stamp would say so too; this is at once)."""
        with self._lock:
            self._entries = {}
            self._stamp = None
            self.generation += 1


_MISSING = object()


class ConfigService:
    def __init__(
        self,
        store: VersionStore,
        keys: KeyService,
        authorizer: Authorizer | None = None,
        clock: Callable[[], datetime] = utcnow,
        value_cache_entries: int = 10_000,
    ) -> None:
        self.store = store
        self.keys = keys
        self.authorizer: Authorizer = authorizer or RootOnly()
        self.clock = clock
        self.values = ValueCache(value_cache_entries)
        self.reads = ReadCache(store)
        self.notifier = ChangeNotifier()
        self.feed = ChangeFeed(self)
        self._env_cache: tuple[object, dict[str, Environment]] | None = None
        self._env_lock = threading.Lock()
        self.import_seconds = IMPORT_SECONDS  # a batched import's time budget (Settings.import_deadline)
        # Set by the composition root when the store records a change's audit entry in its commit.
        self.audit_in_commit = bool(getattr(store, "audit_in_commit", False))

    # ------------------------------------------------------------------ authorization helpers
    def can(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool:
        return self.authorizer.allowed(principal, capability, scope, key)

    def require(self, principal: Principal, capability: str, scope: Scope, key: str) -> None:
        if not self.can(principal, capability, scope, key):
            raise Forbidden(f"this token may not {capability} this key")

    def require_admin(self, principal: Principal) -> None:
        if not self.can(principal, "admin", Scope(), "*"):
            raise Forbidden("this token lacks the admin capability")

    # ------------------------------------------------------------------ values
    def value_of(self, version: Version) -> Any:
        """Decrypt a live version's value (cached; versions are immutable)."""
        cache_key = (version.scope, version.key, version.version)
        hit, value = self.values.get(cache_key)
        if hit:
            return value
        envelope = version.envelope if version.envelope is not None else self.store.load_envelope(version)
        plaintext = crypto.open_envelope(self.keys, version.scope, version.key, version.version, envelope)
        value = json.loads(plaintext)
        self.values.put(cache_key, value, len(plaintext))
        return value

    # ------------------------------------------------------------------ environments
    def envs(self, *, fresh: bool = False) -> dict[str, Environment]:
        """Every environment by name. Cached: under the read stamp where the store has one (exact), else for
        ``ENV_CACHE_SECONDS``."""
        if self.reads.enabled:
            generation = self.reads.validate()
            cached = self.reads.get(("envs",))
            if cached is not _MISSING and not fresh:
                return cached  # type: ignore[no-any-return]
            envs = self._load_envs()
            self.reads.put(("envs",), generation, envs)
            return envs
        now = time.monotonic()
        with self._env_lock:
            timed = self._env_cache
        if timed is not None and not fresh and timed[0] > now:  # type: ignore[operator]
            return timed[1]
        envs = self._load_envs()
        with self._env_lock:
            self._env_cache = (now + ENV_CACHE_SECONDS, envs)
        return envs

    def _load_envs(self) -> dict[str, Environment]:
        envs = {DEFAULT: Environment(DEFAULT, None)}
        for env in self.store.list_envs():
            if env.name != DEFAULT:
                envs[env.name] = env
        return envs

    def env_chain(self, env: str) -> list[str]:
        """``prod`` → ``["prod", "staging", "default"]``: where a read in ``env`` looks, nearest first."""
        if env == DEFAULT:
            return [DEFAULT]  # no store round trip on the hot path
        envs = self.envs()
        if env not in envs:
            envs = self.envs(fresh=True)
            if env not in envs:
                raise NotFound(f"environment '{env}' does not exist")
        chain: list[str] = []
        current: str | None = env
        while current is not None and current not in chain:
            chain.append(current)
            current = envs[current].parent if current in envs else None
        if DEFAULT not in chain:
            chain.append(DEFAULT)
        return chain

    def require_env(self, env: str) -> None:
        self.env_chain(env)

    def list_envs(self, principal: Principal) -> list[Environment]:
        return sorted(self.envs(fresh=True).values(), key=lambda e: e.name)

    def put_env(self, principal: Principal, name: str, parent: str | None) -> bool:
        self.require_admin(principal)
        name = parse_name(name, "env")
        if name == DEFAULT:
            if parent not in (None, ""):
                raise InvalidRequest("the default environment has no parent")
            return False
        parent = parse_name(parent, "env") if parent else DEFAULT
        envs = self.envs(fresh=True)
        if parent not in envs:
            raise NotFound(f"parent environment '{parent}' does not exist")
        # Walk up from the parent: reaching ``name`` again would make a cycle.
        current: str | None = parent
        seen: set[str] = set()
        while current is not None and current not in seen:
            if current == name:
                raise InvalidRequest("that parent would make a cycle of environments")
            seen.add(current)
            current = envs[current].parent if current in envs else None
        created = self.store.put_env(Environment(name, parent))
        with self._env_lock:
            self._env_cache = None
        self.reads.clear()
        return created

    # ------------------------------------------------------------------ reads
    def get(self, principal: Principal, scope: Scope, key: str, version: int | None = None) -> ReadResult:
        if version is None and self.reads.enabled:
            # The hot path: a leaf this node resolved before, under the current stamp (so the key was valid and
            # the environment existed): one stamp check, one policy decision, no parsing, no store read.
            generation = self.reads.validate()
            cached = self.reads.get(("leaf", scope, key))
            if isinstance(cached, ResolvedLeaf) and self.can(principal, "read", scope, key):
                return ReadResult(key, self.value_of(cached.version), scope, cached.env, cached.version, memo=cached.memo)
            # A subtree is cached whole per set of policies: its leaves' decisions and redactions are the same for
            # every principal with the same decision key, and the stamp drops it at any commit.
            tree_key = ("tree", scope, key, self.authorizer.decision_key(principal))
            tree = self.reads.get(tree_key)
            if isinstance(tree, ReadResult):
                return tree
            result = self._read_latest(principal, scope, key)
            if result.version is None:
                self.reads.put(tree_key, generation, result)
            return result
        key = parse_key(key)
        chain = self.env_chain(scope.env)
        if version is not None:
            if version < 1:
                raise InvalidRequest("version must be a positive integer")
            self.require(principal, "read", scope, key)
            found = self.store.get_version(scope, key, version)
            if found is None:
                if self._resolve_subtree(principal, scope, key, chain)[0]:
                    raise InvalidRequest("?version= applies to a key, not to a subtree")
                raise NotFound("no such version of this key")
            if found.deleted:
                raise NotFound("that version is a deletion")
            return ReadResult(key, self.value_of(found), scope, scope.env, found)
        return self._read_latest(principal, scope, key, chain)

    def _read_latest(self, principal: Principal, scope: Scope, key: str, chain: list[str] | None = None) -> ReadResult:
        """The current value at ``key``: its leaf, else the subtree under it (redacted per the caller's policies)."""
        if chain is None:
            key = parse_key(key)
            chain = self.env_chain(scope.env)
        can_read = self.can(principal, "read", scope, key)
        if can_read:
            leaf = self._resolve_leaf(scope, key, chain)
            if leaf is not None:
                return ReadResult(key, self.value_of(leaf.version), scope, leaf.env, leaf.version, memo=leaf.memo)
        leaves, redacted = self._resolve_subtree(principal, scope, key, chain)
        if not leaves and not redacted:
            if not can_read:
                raise Forbidden("this token may not read this key")
            raise NotFound("no value at this key")
        tree: dict[str, Any] = {}
        for leaf in leaves:
            relative = leaf.version.key[len(key) + 1 :]
            _insert(tree, relative.split("."), self.value_of(leaf.version))
        signature = tuple((leaf.version.key, leaf.version.version, leaf.env) for leaf in leaves)
        return ReadResult(key, tree, scope, None, None, redacted, signature)

    def explain(self, principal: Principal, scope: Scope, key: str) -> builtins.list[ExplainLayer]:
        """Each environment a read of ``key`` in ``scope`` walks, nearest first, and what it holds there.

        The whole chain is shown (a layer past the one the read resolved to is what a deletion nearer would
        uncover). Secret values never appear; a layer the caller may not read is ``hidden``.

        >>> # [layer.state for layer in service.explain(ROOT, Scope(env="prod"), "db.host")]
        >>> # ['absent', 'deleted', 'value']   (prod, staging, default)
        """
        key = parse_key(key)
        layers: builtins.list[ExplainLayer] = []
        for env in self.env_chain(scope.env):
            env_scope = scope.with_env(env)
            if not self.can(principal, "read", env_scope, key):
                layers.append(ExplainLayer(env, "hidden"))
                continue
            latest = self.store.latest(env_scope, key)
            if latest is None:
                layers.append(ExplainLayer(env, "absent"))
            elif latest.deleted:
                layers.append(ExplainLayer(env, "deleted", latest))
            elif latest.secret:
                layers.append(ExplainLayer(env, "value", latest))
            else:
                layers.append(ExplainLayer(env, "value", latest, self.value_of(latest), True))
        return layers

    def _resolve_leaf(self, scope: Scope, key: str, chain: list[str]) -> ResolvedLeaf | None:
        """The nearest env's live version of ``key``, unless a nearer env holds an ancestor or a descendant of
        it: that env's shape wins, exactly as in :meth:`resolved_leaves` (so leaf, subtree and export agree)."""
        if not self.reads.enabled:
            return self._resolve_leaf_uncached(scope, key, chain)
        generation = self.reads.validate()
        cache_key = ("leaf", scope, key)
        cached = self.reads.get(cache_key)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        leaf = self._resolve_leaf_uncached(scope, key, chain)
        self.reads.put(cache_key, generation, leaf)
        return leaf

    def _resolve_leaf_uncached(self, scope: Scope, key: str, chain: list[str]) -> ResolvedLeaf | None:
        for depth, env in enumerate(chain):
            env_scope = scope.with_env(env)
            latest = self.store.latest(env_scope, key)
            if latest is not None and not latest.deleted:
                return ResolvedLeaf(latest, env)
            if depth < len(chain) - 1 and self._shapes_key(env_scope, key):
                return None
        return None

    def _shapes_key(self, scope: Scope, key: str) -> bool:
        """Does ``scope`` hold a live ancestor or descendant of ``key``? (One range read: both share its first segment.)"""
        first_segment = key.split(".", 1)[0]
        return any(
            other.key != key and (key.startswith(other.key + ".") or other.key.startswith(key + "."))
            for other in self.store.list_latest(scope, first_segment)
        )

    def resolved_leaves(self, scope: Scope, prefix: str, chain: list[str] | None = None) -> list[ResolvedLeaf]:
        """Live leaves at or under ``prefix`` as env ``scope.env`` sees them (nearest env wins), sorted by key.

        Across environments a leaf in a nearer env hides the whole branch of a farther one at the same
        path (and vice versa), so the resolved tree never holds a key and its prefix at once.
        O(n log n) in the number of leaves; cached under the read stamp like single reads.
        """
        chain = chain or self.env_chain(scope.env)
        if not self.reads.enabled:
            return self._resolve_leaves_uncached(scope, prefix, chain)
        generation = self.reads.validate()
        cache_key = ("leaves", scope, prefix)
        cached = self.reads.get(cache_key)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        leaves = self._resolve_leaves_uncached(scope, prefix, chain)
        self.reads.put(cache_key, generation, leaves)
        return leaves

    def _resolve_leaves_uncached(self, scope: Scope, prefix: str, chain: list[str]) -> list[ResolvedLeaf]:
        chosen: dict[str, ResolvedLeaf] = {}
        for env in chain:
            # Keys chosen from nearer envs, sorted: a farther env's key is hidden by an ancestor among them
            # (a set lookup per segment) or a descendant (a bisection), never by a scan of all of them.
            nearer = sorted(chosen)
            for version in self.store.list_latest(scope.with_env(env), prefix):
                check_deadline()
                if version.key in chosen or _collides(version.key, chosen, nearer):
                    continue
                chosen[version.key] = ResolvedLeaf(version, env)
        return [chosen[k] for k in sorted(chosen)]

    def _resolve_subtree(
        self, principal: Principal, scope: Scope, key: str, chain: list[str]
    ) -> tuple[list[ResolvedLeaf], list[str]]:
        readable: list[ResolvedLeaf] = []
        redacted: list[str] = []
        for leaf in self.resolved_leaves(scope, key, chain):
            check_deadline()
            if leaf.version.key == key:
                continue
            if self.can(principal, "read", scope, leaf.version.key):
                readable.append(leaf)
            elif self.can(principal, "list", scope, leaf.version.key):
                redacted.append(leaf.version.key)
        return readable, redacted

    def list(self, principal: Principal, scope: Scope, prefix: str | None) -> list[ResolvedLeaf]:
        """Every leaf under ``prefix`` the caller may list (all pages at once)."""
        return self.list_page(principal, scope, prefix, limit=None).leaves

    def list_page(
        self, principal: Principal, scope: Scope, prefix: str | None, limit: int | None = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> ListPage:
        """One page of the leaves the caller may list, in key order, after the key ``after``; ``next`` is the cursor
        of the following page (the page's last key) or None. ``limit=None``: no limit."""
        prefix = parse_prefix(prefix)
        if limit is not None and not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        leaves = self.resolved_leaves(scope, prefix)
        start = bisect.bisect_right(leaves, after, key=lambda leaf: leaf.version.key) if after else 0
        page: builtins.list[ResolvedLeaf] = []
        for index in range(start, len(leaves)):
            leaf = leaves[index]
            check_deadline()
            if not self.can(principal, "list", scope, leaf.version.key):
                continue
            if limit is not None and len(page) == limit:
                return ListPage(page, page[-1].version.key)
            page.append(leaf)
        return ListPage(page, None)

    def history(
        self, principal: Principal, scope: Scope, key: str, limit: int = 100, before: int | None = None
    ) -> builtins.list[HistoryEntry]:
        key = parse_key(key)
        self.require_env(scope.env)
        if limit < 1 or limit > MAX_HISTORY_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
        if before is not None and before < 1:
            raise InvalidRequest("before must be a positive integer")
        self.require(principal, "history", scope, key)
        versions = self.store.history(scope, key, limit, before)
        if not versions and self.store.latest(scope, key) is None:
            raise NotFound("this key has no history")
        show_values = self.can(principal, "read", scope, key)
        entries = []
        for version in versions:
            if show_values and not version.secret and not version.deleted:
                entries.append(HistoryEntry(version, self.value_of(version), True))
            else:
                entries.append(HistoryEntry(version))
        return entries

    # ------------------------------------------------------------------ writes
    def put(
        self,
        principal: Principal,
        scope: Scope,
        key: str,
        value: Any,
        secret: bool | None = None,
        expected_version: int | None = None,
        audit: ChangeAuditor | None = None,
    ) -> WriteResult:
        key = parse_key(key)
        check_value(value)
        if expected_version is not None and expected_version < 0:
            raise InvalidRequest("expected_version must be 0 or a positive integer")
        self.require_env(scope.env)
        self.require(principal, "write", scope, key)
        for _ in range(COMMIT_ATTEMPTS):
            latest = self.store.latest(scope, key)
            current = latest.version if latest else 0
            live = latest is not None and not latest.deleted
            if expected_version is not None and not (
                expected_version == current or (expected_version == 0 and not live)
            ):
                raise VersionConflict("expected_version does not match the latest version", current)
            if latest is not None and secret is not None and secret != latest.secret:
                raise SecretFlagImmutable("a key's secret flag is fixed when it is created")
            if latest is not None:
                is_secret = latest.secret
            elif secret is not None:
                is_secret = secret
            else:
                is_secret = self._inherited_secret_flag(scope, key)
            if live and encode_value(self.value_of(latest)) == encode_value(value):  # type: ignore[arg-type]
                return WriteResult(latest, created=False, changed=False)  # type: ignore[arg-type]
            action = Action.UPDATE if live else Action.CREATE
            try:
                committed = self._commit(principal, scope, key, current + 1, action, is_secret, value, audit=audit)
            except VersionConflict:
                if expected_version is not None:
                    raise
                continue  # someone else committed first: re-read and decide again
            return WriteResult(committed, created=action is Action.CREATE)
        raise VersionConflict("too much contention on this key; retry", self._current_version(scope, key))

    def delete(
        self, principal: Principal, scope: Scope, key: str, expected_version: int | None = None, audit: ChangeAuditor | None = None
    ) -> Version:
        key = parse_key(key)
        self.require_env(scope.env)
        self.require(principal, "delete", scope, key)
        for _ in range(COMMIT_ATTEMPTS):
            latest = self.store.latest(scope, key)
            if latest is None or latest.deleted:
                raise NotFound("no value at this key")
            if expected_version is not None and expected_version != latest.version:
                raise VersionConflict("expected_version does not match the latest version", latest.version)
            try:
                return self._commit(principal, scope, key, latest.version + 1, Action.DELETE, latest.secret, None, audit=audit)
            except VersionConflict:
                if expected_version is not None:
                    raise
        raise VersionConflict("too much contention on this key; retry", self._current_version(scope, key))

    def rollback(
        self,
        principal: Principal,
        scope: Scope,
        key: str,
        version: int,
        audit: ChangeAuditor | None = None,
        expected_version: int | None = None,
    ) -> Version:
        """A new version holding version ``version``'s value. ``expected_version``: compare-and-set against the
        latest version, as on writes (the console's rollback sends the version its page showed)."""
        key = parse_key(key)
        self.require_env(scope.env)
        if version < 1:
            raise InvalidRequest("version must be a positive integer")
        self.require(principal, "rollback", scope, key)
        target = self.store.get_version(scope, key, version)
        if target is None:
            raise NotFound("no such version of this key")
        if target.deleted:
            raise InvalidRollback("cannot roll back to a deletion")
        value = self.value_of(target)
        for _ in range(COMMIT_ATTEMPTS):
            current = self._current_version(scope, key)
            if expected_version is not None and expected_version != current:
                raise VersionConflict("expected_version does not match the latest version", current)
            try:
                return self._commit(
                    principal, scope, key, current + 1, Action.ROLLBACK, target.secret, value, rolled_back_from=version, audit=audit
                )
            except VersionConflict:
                if expected_version is not None:
                    raise
                continue
        raise VersionConflict("too much contention on this key; retry", self._current_version(scope, key))

    def _inherited_secret_flag(self, scope: Scope, key: str) -> bool:
        """A new override that does not say whether it is secret takes the flag of what it overrides: a secret in
        ``default`` must not become a plain value in ``prod`` (and show in history and events) by omission."""
        for env in self.env_chain(scope.env)[1:]:
            latest = self.store.latest(scope.with_env(env), key)
            if latest is not None:
                return latest.secret
        return False

    def _current_version(self, scope: Scope, key: str) -> int:
        latest = self.store.latest(scope, key)
        return latest.version if latest else 0

    def _commit(
        self,
        principal: Principal,
        scope: Scope,
        key: str,
        number: int,
        action: Action,
        secret: bool,
        value: Any,
        rolled_back_from: int | None = None,
        audit: ChangeAuditor | None = None,
    ) -> Version:
        pending, encoded = self._seal(principal, scope, key, number, action, secret, value, rolled_back_from)
        entry = audit.entry_for(pending) if audit is not None and self.audit_in_commit else None
        guard = audit.guard if audit is not None else None
        extras: dict[str, Any] = {}
        if entry is not None:
            extras["audit"] = entry
        if guard is not None:
            extras["guard"] = guard
        check_deadline()  # the commit point: past it, the request's outcome is the commit's
        committed = self.store.commit(pending, **extras)
        if entry is not None and audit is not None:
            audit.recorded(entry)
        self._committed([(committed, encoded)])
        return committed

    def _seal(
        self,
        principal: Principal,
        scope: Scope,
        key: str,
        number: int,
        action: Action,
        secret: bool,
        value: Any,
        rolled_back_from: int | None = None,
    ) -> tuple[Version, bytes | None]:
        """The version to commit (its value sealed) and the value's canonical encoding (None for a deletion)."""
        envelope = key_id = encoded = None
        if action is not Action.DELETE:
            encoded = encode_value(value)
            envelope = crypto.seal(self.keys, scope, key, number, encoded)
            key_id = crypto.envelope_key_id(envelope)
        pending = Version(
            scope=scope,
            key=key,
            version=number,
            action=action,
            secret=secret,
            updated_at=self.clock(),
            updated_by=principal.service,
            rolled_back_from=rolled_back_from,
            envelope=envelope,
            key_id=key_id,
        )
        return pending, encoded

    def _committed(self, done: Iterable[tuple[Version, bytes | None]]) -> None:
        """After commits: caches, then the change feed, then the watchers."""
        self.reads.clear()
        for version, encoded in done:
            if encoded is not None:
                self.values.put((version.scope, version.key, version.version), json.loads(encoded), len(encoded))
        changes: list[Change] | None
        try:
            changes = self.feed.refresh()  # before waking anyone: woken watchers find the change in memory
        except TesseraError:
            changes = None  # committed all the same (the feed's poller reads it later): wake every waiter
        self.notifier.notify(changes)

    # ------------------------------------------------------------------ import / export / diff
    def import_values(
        self,
        principal: Principal,
        scope: Scope,
        values: dict[str, Any],
        secrets: Iterable[str] = (),
        audit: ChangeAuditor | None = None,
    ) -> ImportResult:
        self.require_env(scope.env)
        secret_keys = set(secrets)
        leaves = flatten(values)
        if getattr(self.store, "commit_batch", None) is not None:
            return self._import_batched(principal, scope, leaves, secret_keys, audit)
        created = updated = unchanged = 0
        errors: list[dict[str, str]] = []
        for key, value in leaves:
            try:
                # Authorization before the value is examined: a caller refused a key costs no value check.
                self.require(principal, "write", scope, parse_key(key))
                result = self.put(principal, scope, key, value, secret=True if key in secret_keys else None, audit=audit)
            except SecretFlagImmutable:
                # A key already secret stays secret; a plain key named in ``secrets`` is an error.
                errors.append({"key": key, "code": SecretFlagImmutable.code, "message": "key exists and is not secret"})
                continue
            except TesseraError as exc:
                errors.append({"key": key, "code": exc.code, "message": exc.message})
                continue
            if not result.changed:
                unchanged += 1
            elif result.created:
                created += 1
            else:
                updated += 1
        return ImportResult(created, updated, unchanged, errors)

    def _import_batched(
        self, principal: Principal, scope: Scope, leaves: builtins.list[tuple[str, Any]], secret_keys: set[str], audit: ChangeAuditor | None
    ) -> ImportResult:
        """An import on a store that commits many keys per transaction (aws, ``commit_batch``), same outcome as one
        ``put`` per key: heads read in batches, values compared and sealed in parallel, then the whole plan checked
        against what the store can write in one request (refused up front, ``413``, with nothing written, when it
        cannot), then batched commits. A key whose commit lost a race is put on its own (re-read, as ``put`` does);
        keys the time budget left out are named in ``errors`` (``deadline_exceeded``), never dropped silently."""
        deadline = time.monotonic() + self.import_seconds
        errors: dict[int, dict[str, str]] = {}
        wanted: builtins.list[tuple[int, str, Any]] = []
        for index, (raw, value) in enumerate(leaves):
            try:  # the order of the per-key path: syntax, permission, then the value
                key = parse_key(raw)
                self.require(principal, "write", scope, key)
                check_value(value)
            except TesseraError as exc:
                errors[index] = {"key": raw, "code": exc.code, "message": exc.message}
                continue
            wanted.append((index, key, value))
        latest_many = getattr(self.store, "latest_many", None)
        keys = [key for _, key, _ in wanted]
        heads = latest_many(scope, keys) if latest_many is not None else {key: self.store.latest(scope, key) for key in keys}

        def decide(key: str, value: Any) -> tuple[Version, bool] | None:
            """The version to write (unsealed) and whether it creates the key; None when the value is unchanged."""
            latest = heads[key]
            secret = True if key in secret_keys else None
            if latest is not None and secret is not None and secret != latest.secret:
                raise SecretFlagImmutable("key exists and is not secret")
            is_secret = latest.secret if latest is not None else secret if secret is not None else self._inherited_secret_flag(scope, key)
            live = latest is not None and not latest.deleted
            if live and encode_value(self.value_of(latest)) == encode_value(value):  # type: ignore[arg-type]
                return None
            action = Action.UPDATE if live else Action.CREATE
            number = (latest.version if latest is not None else 0) + 1
            return Version(scope=scope, key=key, version=number, action=action, secret=is_secret, updated_at=self.clock(),
                           updated_by=principal.service), action is Action.CREATE  # fmt: skip

        unchanged = 0
        planned: builtins.list[tuple[int, str, Any, Version, bool]] = []
        with ThreadPoolExecutor(IMPORT_WORKERS, thread_name_prefix="tessera-import") as pool:
            decided = [(index, key, value, pool.submit(decide, key, value)) for index, key, value in wanted]
            for index, key, value, future in decided:
                try:
                    outcome = future.result()
                except TesseraError as exc:
                    errors[index] = {"key": key, "code": exc.code, "message": exc.message}
                    continue
                if outcome is None:
                    unchanged += 1
                else:
                    planned.append((index, key, value, *outcome))
            limit = getattr(self.store, "max_import_transactions", None)
            needed = self.store.transactions_for([stub for *_, stub, _ in planned]) if limit is not None else 0  # type: ignore[attr-defined]
            if limit is not None and needed > limit:
                raise PayloadTooLarge(
                    f"this import needs {needed} transactions; this backend writes at most {limit} in one request "
                    f"(API Gateway's 29 s): nothing was written, split it (e.g. by prefix)"
                )
            sealed = [pool.submit(self._seal, principal, scope, key, stub.version, stub.action, stub.secret, value)
                      for _, key, value, stub, _ in planned]  # fmt: skip
            pendings: builtins.list[tuple[Version, bytes | None] | None] = []
            for (index, key, *_), seal in zip(planned, sealed, strict=True):
                try:
                    pendings.append(seal.result())
                except TesseraError as exc:
                    errors[index] = {"key": key, "code": exc.code, "message": exc.message}
                    pendings.append(None)
        keep = [number for number, pending in enumerate(pendings) if pending is not None]
        versions = [sealed_version(pendings[number])[0] for number in keep]
        entries = [audit.entry_for(version) if audit is not None and self.audit_in_commit else None for version in versions]
        outcomes = self.store.commit_batch(versions, entries, deadline) if versions else []  # type: ignore[attr-defined]
        created = updated = 0
        done: builtins.list[tuple[Version, bytes | None]] = []
        for number, outcome, entry in zip(keep, outcomes, entries, strict=True):
            index, key, value, _, creates = planned[number]
            if isinstance(outcome, VersionConflict) and time.monotonic() < deadline:
                try:  # lost a race with another writer: re-read and decide again, as a put does
                    result = self.put(principal, scope, key, value, secret=True if key in secret_keys else None, audit=audit)
                except TesseraError as exc:
                    errors[index] = {"key": key, "code": exc.code, "message": exc.message}
                    continue
                unchanged += not result.changed
                created += result.changed and result.created
                updated += result.changed and not result.created
                continue
            if isinstance(outcome, TesseraError):
                errors[index] = {"key": key, "code": outcome.code, "message": outcome.message}
                continue
            if entry is not None and audit is not None:
                audit.recorded(entry)
            done.append((outcome, sealed_version(pendings[number])[1]))
            created += creates
            updated += not creates
        if done:
            self._committed(done)
        return ImportResult(created, updated, unchanged, [errors[index] for index in sorted(errors)])

    def export(self, principal: Principal, scope: Scope, prefix: str | None) -> dict[str, Any]:
        """Flat ``{key: value}`` of the resolved tree the caller may read."""
        prefix = parse_prefix(prefix)
        flat: dict[str, Any] = {}
        for leaf in self.resolved_leaves(scope, prefix):
            check_deadline()
            if self.can(principal, "read", scope, leaf.version.key):
                flat[leaf.version.key] = self.value_of(leaf.version)
        return flat

    def diff(self, principal: Principal, namespace: str, from_env: str, to_env: str, prefix: str | None) -> dict[str, builtins.list[dict[str, Any]]]:
        prefix = parse_prefix(prefix)
        source = Scope(namespace, from_env)
        target = Scope(namespace, to_env)
        before = {leaf.version.key: leaf for leaf in self.resolved_leaves(source, prefix)}
        after = {leaf.version.key: leaf for leaf in self.resolved_leaves(target, prefix)}
        added, removed, changed = [], [], []
        for key in sorted(set(before) | set(after)):
            check_deadline()
            if not (self.can(principal, "read", source, key) and self.can(principal, "read", target, key)):
                continue
            old, new = before.get(key), after.get(key)
            secret = bool((old and old.version.secret) or (new and new.version.secret))
            # The version of the key in ``to`` itself (what promote's ``expected`` wants): a live value of ``to``'s
            # own always resolves from ``to`` (nothing is nearer), so the resolved leaf tells it without a read.
            to_version = new.version.version if new is not None and new.env == to_env else 0
            if old is None and new is not None:
                added.append(_diff_item(key, secret, "value", self.value_of(new.version), to_version))
            elif new is None and old is not None:
                removed.append(_diff_item(key, secret, "value", self.value_of(old.version), to_version))
            elif old is not None and new is not None:
                old_value, new_value = self.value_of(old.version), self.value_of(new.version)
                if encode_value(old_value) != encode_value(new_value):
                    item = {"key": key, "secret": secret}
                    if not secret:
                        item.update({"from": old_value, "to": new_value})
                    item["to_version"] = to_version
                    changed.append(item)
        return {"added": added, "removed": removed, "changed": changed}

    def promote(
        self,
        principal: Principal,
        namespace: str,
        from_env: str,
        to_env: str,
        prefix: str | None,
        keys: Iterable[str] | None,
        expected: dict[str, int],
        audit: ChangeAuditor | None = None,
    ) -> PromoteResult:
        """Copy ``from_env``'s resolved values that differ from ``to_env``'s into ``to_env``, all or nothing.

        ``expected`` maps keys to the version the caller saw in ``to_env`` (0: none, as ``diff`` reports it in
        ``to_version``). Every entry is compared with the key's version now, and every key to copy must have
        one: otherwise :class:`VersionsMoved` names the keys that moved and nothing is written. Keys only in
        ``to_env`` are left alone; keys the caller may not read in both are left out (as ``diff`` does); a key
        to copy needs ``write`` in ``to_env``. The copies commit in one transaction on stores that have
        ``commit_many`` (the embedded one); see ``docs/contract-notes.md`` for stores that do not.

        >>> # service.promote(ROOT, "default", "staging", "prod", None, None, {"db.host": 3})
        """
        prefix = parse_prefix(prefix)
        source, target = Scope(namespace, from_env), Scope(namespace, to_env)
        self.require_env(from_env)
        self.require_env(to_env)
        wanted = None if keys is None else {parse_key(key) for key in keys}
        expected = {parse_key(key): number for key, number in expected.items()}
        before = {leaf.version.key: leaf for leaf in self.resolved_leaves(source, prefix)}
        after = {leaf.version.key: leaf for leaf in self.resolved_leaves(target, prefix)}
        copies: builtins.list[tuple[str, ResolvedLeaf, Any]] = []
        visible: set[str] = set()
        unchanged = 0
        for key, leaf in before.items():
            if wanted is not None and key not in wanted:
                continue
            if not (self.can(principal, "read", source, key) and self.can(principal, "read", target, key)):
                continue
            visible.add(key)
            value = self.value_of(leaf.version)
            other = after.get(key)
            if other is not None and encode_value(self.value_of(other.version)) == encode_value(value):
                unchanged += 1
                continue
            copies.append((key, leaf, value))
        if wanted is not None and wanted - visible:
            missing = ", ".join(sorted(wanted - visible)[:10])
            raise NotFound(f"no value in '{from_env}' (that this token may read) for: {missing}")
        for key, _, _ in copies:
            self.require(principal, "write", target, key)
        heads = {key: self.store.latest(target, key) for key in sorted(set(expected) | {key for key, _, _ in copies})}
        for key, leaf, _ in copies:
            head, other = heads[key], after.get(key)
            flag = head.secret if head is not None else other.version.secret if other is not None else None
            if flag is not None and flag != leaf.version.secret:
                raise SecretFlagImmutable(f"'{key}' is secret in one of the two environments and not in the other")
        moved = {key: _cas_version(head) for key, head in heads.items() if key in expected and not _cas_matches(expected[key], head)}
        moved.update({key: _cas_version(heads[key]) for key, _, _ in copies if key not in expected})
        if moved:
            raise VersionsMoved(f"{len(moved)} key(s) changed in '{to_env}' since they were compared (or were not in 'expected')", moved)
        sealed = []
        for key, leaf, value in copies:
            head = heads[key]
            live = head is not None and not head.deleted
            number = (head.version if head is not None else 0) + 1
            sealed.append(self._seal(principal, target, key, number, Action.UPDATE if live else Action.CREATE, leaf.version.secret, value))
        if not sealed:
            return PromoteResult([], unchanged)
        pendings = [pending for pending, _ in sealed]
        entries = [audit.entry_for(pending) if audit is not None and self.audit_in_commit else None for pending in pendings]
        committed = self._commit_together(pendings, entries, expected, target)
        if audit is not None:
            for entry in entries:
                if entry is not None:
                    audit.recorded(entry)
        self._committed(zip(committed, [encoded for _, encoded in sealed], strict=True))
        return PromoteResult(committed, unchanged)

    def _commit_together(
        self, pendings: builtins.list[Version], entries: builtins.list[Any], expected: dict[str, int], target: Scope
    ) -> builtins.list[Version]:
        check_deadline()  # the commit point of all of them (never between two: it is all or nothing)
        commit_many = getattr(self.store, "commit_many", None)
        if commit_many is not None:
            try:
                return commit_many(pendings, entries)  # type: ignore[no-any-return]
            except VersionConflict:
                # A write landed between the checks and the transaction: nothing was written; name what moved.
                now = {p.key: self.store.latest(target, p.key) for p in pendings}
                moved = {key: _cas_version(head) for key, head in now.items() if not _cas_matches(expected[key], head)}
                raise VersionsMoved(f"{len(moved) or 'some'} key(s) changed in '{target.env}' while promoting", moved) from None
        # A store without multi-key transactions (aws): every check above passed, then each key commits on its own
        # compare-and-set. A write racing this between two of these commits stops it there (docs/contract-notes.md).
        committed: builtins.list[Version] = []
        for pending, entry in zip(pendings, entries, strict=True):
            try:
                committed.append(self.store.commit(pending, **({"audit": entry} if entry is not None else {})))
            except VersionConflict as exc:
                self._committed([(version, None) for version in committed])
                raise VersionsMoved(
                    f"'{pending.key}' changed in '{target.env}' while promoting; promoted before it: "
                    f"{', '.join(v.key for v in committed) or 'none'}",
                    {pending.key: exc.current_version},
                ) from None
        return committed


def sealed_version(sealed: tuple[Version, bytes | None] | None) -> tuple[Version, bytes | None]:
    assert sealed is not None
    return sealed


def _diff_item(key: str, secret: bool, field_name: str, value: Any, to_version: int) -> dict[str, Any]:
    item: dict[str, Any] = {"key": key, "secret": secret}
    if not secret:
        item[field_name] = value
    item["to_version"] = to_version
    return item


def _cas_version(head: Version | None) -> int:
    """A key's version for compare-and-set as the caller sees it: its latest version, 0 when it has no live value."""
    return head.version if head is not None and not head.deleted else 0


def _cas_matches(expected: int, head: Version | None) -> bool:
    """``expected_version``'s rule: the latest version (deletions count), or 0 for "no live value"."""
    current = head.version if head is not None else 0
    return expected == current or (expected == 0 and (head is None or head.deleted))


def _collides(key: str, chosen: dict[str, ResolvedLeaf], nearer: builtins.list[str]) -> bool:
    """True when ``key`` is an ancestor or descendant of a key chosen from a nearer env (``nearer``: those keys,
    sorted; keys of the env being resolved never collide with each other, the store refuses that)."""
    parts = key.split(".")
    if any(".".join(parts[:i]) in chosen for i in range(1, len(parts))):
        return True
    prefix = key + "."
    at = bisect.bisect_left(nearer, prefix)
    return at < len(nearer) and nearer[at].startswith(prefix)


def _insert(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for segment in path[:-1]:
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            return  # a leaf already stands here (resolved from a nearer env)
        node = child
    node.setdefault(path[-1], value)


