"""Which collections and aliases exist, the locks each collection's calls take, and loading them at start.

Concurrency: per collection, one writer at a time (``Handle.writing``), and a readers-writer lock that
searches share and that a writer holds exclusively only while it applies an already-committed write to
memory. A write is applied before it is acknowledged, so a search issued after the acknowledgement sees
it; searches never wait for a disk commit.

Aliases: a name that resolves to a collection at call time. Each call resolves it once (a search through
an alias re-pointed mid-call answers wholly from one collection); the alias map is replaced whole under
the registry lock, so readers need no lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from index_service.collection import Collection
from index_service.config import MAX_SPACES
from index_service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from index_service.loading import load_collection
from index_service.model import (
    CollectionSpec,
    CollectionStats,
    LexicalSpec,
    LexicalStats,
    SpaceStats,
    VectorSpec,
)
from index_service.space import Space
from index_service.specs import (
    check_collection_name,
    normalize_lexical_spec,
    normalize_spec,
    normalize_vector_spec,
)
from index_service.storage import Storage
from vitrine.errors import quoted

log = logging.getLogger(__name__)


class RWLock:
    """Many readers or one writer; writers are not starved because a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Handle:
    """A collection as it is served: the collection, its locks, and whether it has been dropped."""

    def __init__(self, collection: Collection, device: str, storage: Storage) -> None:
        self.c = collection
        self.device = device
        self.storage = storage
        for space in collection.spaces.values():
            self.attach(space)
        self.write_mutex = threading.Lock()
        self.rw = RWLock()
        self.dropped = False

    def attach(self, space: Space) -> None:
        if self.device == "gpu":  # GPU
            from index_service.gpu import GpuMirror

            space.gpu = GpuMirror()

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Collection]:
        """This writer's turn; NOT_FOUND when the collection was dropped while the call waited for it."""
        with self.write_mutex:
            if self.dropped:
                raise NotFound(f"collection {quoted(name)} does not exist")
            yield self.c

    def stats(self) -> CollectionStats:
        c = self.c
        with self.rw.read():
            return CollectionStats(
                spec=c.spec,
                count=c.count,
                vectors=tuple(
                    SpaceStats(
                        name=space.name,
                        dim=space.dim,
                        index_total=int(space.index.ntotal) if space.index is not None else 0,
                        trained=space.trained,
                        nlist=space.nlist,
                        snapshot_slot=space.snapshot_slot,
                        count=space.count,
                    )
                    for space in c.spaces.values()
                ),
                device=self.device,
                lexical=tuple(
                    LexicalStats(name, self.storage.lexical_count(c.name, name)) for name in c.lexical
                ),
            )


class Registry:
    def __init__(self, storage: Storage, device: str, brute_force_max: int) -> None:
        self.storage = storage
        self.device = device
        self.brute_force_max = brute_force_max
        self._handles: dict[str, Handle] = {}
        self._aliases: dict[str, str] = {}
        """alias -> collection; replaced whole under ``_lock``."""
        self._broken: dict[str, str] = {}
        """Collections that could not be loaded at start: name -> why (an exception's class name)."""
        self._lock = threading.Lock()

    def load(self, progress: bool = False) -> None:
        """Rebuild memory from the database and the latest snapshots (the restart path).

        A collection that cannot be loaded is logged and skipped, so it cannot keep the others from
        serving; calls naming it are FAILED_PRECONDITION until it is dropped. An unreadable snapshot is
        not such a failure: the space's index is rebuilt from the stored vectors instead.
        """
        start = time.perf_counter()
        for stored in self.storage.collections():
            name = stored.spec.name
            try:
                collection = load_collection(self.storage, stored, self.brute_force_max, progress)
            except Exception as exc:
                self._broken[name] = str(exc)[:200] if isinstance(exc, ValueError) else type(exc).__name__
                log.error(
                    "collection could not be loaded; skipped",
                    extra={"collection": name, "error": repr(exc)[:500]},
                )
            else:
                self._handles[name] = Handle(collection, self.device, self.storage)
        self._aliases = self.storage.aliases()
        seconds = time.perf_counter() - start
        log.info("index loaded", extra={"seconds": round(seconds, 3), "collections": len(self._handles)})

    # ---- names ----

    def resolve(self, name: str) -> str:
        """The collection a name means now: an alias's target, else the name itself."""
        return self._aliases.get(name, name)

    def handle(self, name: str) -> Handle:
        target = self._aliases.get(name, name)
        handle = self._handles.get(target)
        if handle is None:
            if target in self._broken:
                raise FailedPrecondition(
                    f"collection {quoted(target)} could not be loaded at start ({self._broken[target]}); "
                    "drop it and create it again"
                )
            raise NotFound(f"collection {quoted(name)} does not exist")
        return handle

    def handles(self) -> list[Handle]:
        """Every collection serving now, by name (safe without the lock: the map is copied at once)."""
        return [handle for _, handle in sorted(self._handles.items())]

    # ---- collections ----

    def create(self, spec: CollectionSpec) -> CollectionStats:
        """Validate, build in memory (every space's FAISS index), and only then persist: a stored spec
        is one this service has already built, so a restart can always load it."""
        spec = normalize_spec(spec)
        collection = Collection(spec, self.brute_force_max)
        for space in collection.spaces.values():
            space.check_buildable()
        with self._lock:
            if spec.name in self._aliases:
                raise AlreadyExists(f"{quoted(spec.name)} is an alias; a collection cannot take its name")
            self.storage.create_collection(spec)
            handle = self._handles[spec.name] = Handle(collection, self.device, self.storage)
        return handle.stats()

    def drop(self, name: str) -> None:
        with self._lock:
            if name in self._broken and not any(t == name for t in self._aliases.values()):
                self.storage.drop_collection(name)
                del self._broken[name]
                return
            handle = self.handle(name)
            name = handle.c.name
            pointing = sorted(a for a, target in self._aliases.items() if target == name)
            if pointing:
                raise FailedPrecondition(
                    f"collection {quoted(name)} is the target of alias {quoted(pointing[0])}"
                    + (f" and {len(pointing) - 1} more" if len(pointing) > 1 else "")
                    + "; re-point or delete its aliases first"
                )
            with handle.write_mutex:
                self.storage.drop_collection(name)
                handle.dropped = True
                del self._handles[name]

    # ---- aliases ----

    def set_alias(self, alias: str, collection: str) -> str:
        """Create or re-point ``alias``; returns the collection it pointed to before ('' when new)."""
        check_collection_name(alias, "alias")
        with self._lock:
            if alias in self._handles:
                raise AlreadyExists(f"{quoted(alias)} is a collection; an alias cannot take its name")
            if collection in self._aliases:
                raise InvalidArgument(f"{quoted(collection)} is an alias; an alias points to a collection")
            if collection not in self._handles:
                raise NotFound(f"collection {quoted(collection)} does not exist")
            previous = self._aliases.get(alias, "")
            if previous != collection:
                self.storage.set_alias(alias, collection)
                self._aliases = {**self._aliases, alias: collection}
            return previous

    def delete_alias(self, alias: str) -> None:
        with self._lock:
            if alias not in self._aliases:
                raise NotFound(f"alias {quoted(alias)} does not exist")
            self.storage.delete_alias(alias)
            self._aliases = {a: c for a, c in self._aliases.items() if a != alias}

    def list_aliases(self) -> list[tuple[str, str]]:
        return sorted(self._aliases.items())

    # ---- vector spaces ----

    def add_space(self, name: str, vector: VectorSpec) -> CollectionStats:
        """Build the new space in memory (its FAISS index included), persist the spec, then publish it."""
        vector = normalize_vector_spec(vector)
        handle = self.handle(name)
        with handle.writing(name) as c:
            if vector.name in c.spaces or vector.name in c.lexical:
                raise AlreadyExists(f"collection {quoted(c.name)} already has a space {quoted(vector.name)}")
            if len(c.spaces) >= MAX_SPACES:
                raise InvalidArgument(
                    f"collection {quoted(c.name)} already has the most spaces, {MAX_SPACES}"
                )
            space = c.new_space(vector)
            space.check_buildable()
            handle.attach(space)
            self.storage.set_spec(replace(c.spec, vectors=(*c.spec.vectors, vector)))
            with handle.rw.write():
                c.install(space)
        return handle.stats()

    def add_lexical(self, name: str, spec: LexicalSpec) -> CollectionStats:
        """Create a lexical space and fill it from every stored item in one transaction (the writer's
        turn is held, so no item is written meanwhile), then publish it."""
        handle = self.handle(name)
        with handle.writing(name) as c:
            spec = normalize_lexical_spec(spec, c.spec)
            self.storage.add_lexical(replace(c.spec, lexical=(*c.spec.lexical, spec)), spec)
            with handle.rw.write():
                c.install_lexical(spec)
        return handle.stats()

    def drop_space(self, name: str, space_name: str) -> CollectionStats:
        handle = self.handle(name)
        with handle.writing(name) as c:
            space = c.spaces.get(space_name)
            if space is None and space_name in c.lexical:
                raise FailedPrecondition(
                    f"space {quoted(space_name)} of {quoted(c.name)} is lexical; a lexical space is dropped "
                    "only with its collection"
                )
            if space is None:
                raise NotFound(f"collection {quoted(c.name)} has no vector space {quoted(space_name)}")
            if not space.spec.optional:
                raise FailedPrecondition(
                    f"vector space {quoted(space_name)} of {quoted(c.name)} is not optional: every item has "
                    "a vector in it; only optional spaces can be dropped"
                )
            kept = tuple(v for v in c.spec.vectors if v.name != space_name)
            self.storage.set_spec(replace(c.spec, vectors=kept), dropped_space=space_name)
            with handle.rw.write():
                c.remove_space(space_name)
        return handle.stats()
