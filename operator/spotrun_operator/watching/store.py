"""One kind's watch-fed store (client-go's thread-safe store with its indexers): kept
objects by (namespace, name), replaced only by a newer resourceVersion, tombstones of the
deleted, and the keys the initial listing expects before the store counts as synced.
:mod:`cache` holds one per watched kind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from spotrun_operator.watching.trim import trimmed

Obj = dict[str, Any]
V = TypeVar("V")
Key = tuple[str, str]  # (namespace or "", name)
IndexKey = tuple[str, str]  # (namespace, value): ("", value) for a cluster-wide index
Indexer = Callable[[Mapping[str, Any]], IndexKey | None]
# How long a deleted object's tombstone outlives it (late watch events arrive in ms).
TOMBSTONE_SECONDS = 600.0


def _version(obj: Mapping[str, Any]) -> int | None:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else None


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _drop_oldest_while(entries: dict[Any, V], expired: Callable[[V], bool]) -> None:
    """Drop entries of an insertion-ordered dict from its oldest on, while ``expired``
    says so (entries go in in time order, so the first one kept ends the pass)."""
    while entries:
        oldest = next(iter(entries))
        if not expired(entries[oldest]):
            return
        del entries[oldest]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name"))


class Store:
    """The newest known state of each object of one kind, with optional indexes (by the
    run's label, a node's name, a Kueue job UID). Safe to share between the event loop
    (writer) and reconcile threads (readers)."""

    def __init__(
        self,
        kind: str,
        transform: Callable[[Mapping[str, Any]], Obj] = trimmed,
        clock: Callable[[], float] = time.monotonic,
        indexes: Mapping[str, Indexer] | None = None,
    ) -> None:
        self.kind = kind
        self._clock = clock
        self._indexers = dict(indexes or {})
        self._transform = transform
        self._lock = threading.Lock()
        self._objs: dict[Key, Obj] = {}
        self._index: dict[str, dict[IndexKey, set[Key]]] = {i: {} for i in self._indexers}
        # key -> (when, the version and the UID of the deleted object)
        self._tombstones: dict[Key, tuple[float, int, str]] = {}
        # The objects listed at start that no event has brought yet (key -> UID); None
        # until that listing is known (:meth:`expect`).
        self._pending: dict[Key, str] | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._objs)

    def put(self, obj: Mapping[str, Any]) -> bool:
        """Keep ``obj`` unless what is known is newer; True when kept."""
        key, version = _key(obj), _version(obj)
        with self._lock:
            if version is not None and not self._newer(key, version, uid_of(obj)):
                return False
            self._tombstones.pop(key, None)
            old = self._objs.get(key)
            if old is not None:
                self._unindex(key, old)
            self._objs[key] = self._transform(obj)
            self._reindex(key, obj)
            if self._pending:
                self._pending.pop(key, None)
        return True

    def delete(self, obj: Mapping[str, Any]) -> None:
        """``obj`` is gone (its last state, as a DELETED event or a DELETE answer says)."""
        key, version = _key(obj), _version(obj)
        with self._lock:
            if version is not None and not self._newer(key, version, uid_of(obj)):
                return
            self._bury(key, version or 0, uid_of(obj))

    def forget(self, namespace: str, name: str, uid: str) -> None:
        """The object ``uid`` is gone, known without its last state (a DELETE answered
        with a Status): every event of that object still on its way is old news."""
        key = (namespace, name)
        with self._lock:
            old = self._objs.get(key)
            if old is not None and uid_of(old) not in ("", uid):
                return  # a newer object of the same name is already known
            known = _version(old) if old is not None else None
            self._bury(key, known or 0, uid)

    def _bury(self, key: Key, version: int, uid: str) -> None:
        old = self._objs.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        now = self._clock()
        # Re-inserted at the end, so the dict stays in burial order and expiry looks only
        # at its oldest entries (a scan of every tombstone per deletion was O(n^2) in a
        # storm: py-spy, operator_scale at 1,100 runs).
        buried_uid = uid or (uid_of(old) if old is not None else "")
        self._tombstones.pop(key, None)
        self._tombstones[key] = (now, version, buried_uid)
        _drop_oldest_while(self._tombstones, lambda t: now - t[0] > TOMBSTONE_SECONDS)
        if self._pending and self._pending.get(key) in (buried_uid, ""):
            del self._pending[key]

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objs.get((namespace, name))

    def as_kept(self, obj: Mapping[str, Any]) -> Obj:
        """``obj`` as this store keeps it: the stored object itself when the store holds
        this very version (each handler files the event before it reads it back), so
        what else remembers it shares the kept copy and its shared strings rather than
        the watch event's; a transformed copy otherwise (a deleted object, or a newer
        version from the operator's own write)."""
        key = _key(obj)
        kept = self.get(*key)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kept is not None and kept["metadata"].get("resourceVersion") == version:
            return kept
        return self._transform(obj)

    def indexed(self, index: str, namespace: str, value: str) -> list[Obj]:
        """Objects filed under (``namespace``, ``value``) in ``index`` (namespace "" for a
        cluster-wide index)."""
        with self._lock:
            keys = self._index[index].get((namespace, value), set())
            return [self._objs[k] for k in sorted(keys)]

    # --- the initial sync (client-go's HasSynced) ------------------------------------
    def expect(self, listed: Sequence[tuple[Key, str]]) -> None:
        """The (key, UID) of every object a listing found: the store is synced once each
        is here, or its deletion was seen."""
        with self._lock:
            self._pending = {
                key: uid
                for key, uid in listed
                if key not in self._objs and not self._buried(key, uid)
            }

    def confirm(self, listed: Sequence[tuple[Key, str]]) -> None:
        """A later listing: what was pending and is no longer listed was deleted before
        the watch's own listing, so no event of it will ever come."""
        alive = set(listed)
        with self._lock:
            if self._pending:
                self._pending = {k: u for k, u in self._pending.items() if (k, u) in alive}

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._pending is not None and not self._pending

    def pending(self) -> int | None:
        """How many listed objects no event has brought yet (None: not listed yet)."""
        with self._lock:
            return None if self._pending is None else len(self._pending)

    def _buried(self, key: Key, uid: str) -> bool:
        tomb = self._tombstones.get(key)
        return tomb is not None and tomb[2] in (uid, "")

    def _newer(self, key: Key, version: int, uid: str) -> bool:
        old = self._objs.get(key)
        if old is not None:
            known = _version(old)
            return known is None or version >= known
        if key in self._tombstones:
            # The deleted object's own states (watch events that arrive after the DELETE's
            # answer) are no news: only another object (UID), or a newer version, is.
            _, buried, buried_uid = self._tombstones[key]
            if uid and buried_uid:
                return uid != buried_uid
            return version > buried
        return True

    def _reindex(self, key: Key, obj: Mapping[str, Any]) -> None:
        for name, filed_by in self._indexers.items():
            at = filed_by(obj)
            if at is not None:
                self._index[name].setdefault(at, set()).add(key)

    def _unindex(self, key: Key, obj: Mapping[str, Any]) -> None:
        for name, filed_by in self._indexers.items():
            at = filed_by(obj)
            keys = self._index[name].get(at) if at is not None else None
            if at is not None and keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[name][at]
