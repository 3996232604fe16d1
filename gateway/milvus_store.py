"""The blocking half of the Milvus backend: one catalog as an alias over a generation of collections.

pymilvus is synchronous; ``gateway.milvus_index`` runs these methods in its thread pool. The catalog's
name is an alias (``products``) pointing at one physical collection (``products__g1``). Adding or
dropping a vector space is a schema change, which milvus-lite cannot make in place (no
AddCollectionField) and Milvus 2.6 cannot make for vector fields: the next generation is created with the
new schema, every row copied, and the alias switched in one ``alter_alias``; the old generation is then
dropped. Writes this process makes wait for the switch (one lock); writes another process makes to the
old generation during the copy are not carried over, so schema changes belong to quiet moments (a
rollout's spaces are added before its re-index starts, as ``operations.rollout`` does).

Every read names ``consistency_level="Strong"``: a cluster's default (Bounded) may not yet see a write
the gateway acknowledged a moment ago. milvus-lite accepts the level and is always strong.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import milvus_rows as mr
from gateway.errors import InvalidInput, NotFound
from vitrine.errors import quoted
from vitrine.filters import PRICE

STRONG = "Strong"
GENERATION = "__g"
COPY_BATCH = 500
FLUSH_EVERY = 2000
"""milvus-lite searches rows not yet flushed one by one (seconds at 20k): flush after this many writes,
and whenever writes pause for ``FLUSH_IDLE_S`` (a flush costs ~0.3 s and leaves a segment behind, so
not after every batch of a stream)."""
FLUSH_IDLE_S = 0.5
CONNECT_TIMEOUT_S = 2.0
"""How long connecting to a Milvus server may take before the index is reported UNAVAILABLE."""
SCHEMA_TTL_S = 1.0
"""How long reads trust the cached schema; another process may switch the alias to a new generation."""

INDEX_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "flat": ("FLAT", {}),
    "hnsw": ("HNSW", {"M": 32, "efConstruction": 200}),
    "ivf_flat": ("IVF_FLAT", {"nlist": 128}),
}
SEARCH_PARAMS: dict[str, dict[str, Any]] = {"FLAT": {}, "HNSW": {"ef": 256}, "IVF_FLAT": {"nprobe": 16}}


@dataclass(frozen=True)
class Schema:
    """What a generation holds: its physical name, its spaces (name -> dim, stored order) and index kinds."""

    physical: str
    dims: dict[str, int]
    kinds: dict[str, str]
    numbers: tuple[str, ...]
    keywords: tuple[str, ...]

    def optional(self, required: Sequence[str]) -> list[str]:
        return [s for s in self.dims if s not in required]


class ReadGate:
    """Reads share it; a milvus-lite flush holds it alone. milvus-lite swaps its memtable out before the
    flushed segment is readable, so a read during a flush misses rows (seen here: a get of 60 ids
    returned 27)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._alone = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._readers)
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


def uri_of(address: str) -> str:
    """``milvus://host:port`` -> ``http://host:port``; ``milvus-lite:<path>`` -> the file path (embedded)."""
    if address.startswith("milvus-lite:"):
        return address[len("milvus-lite:") :]
    if address.startswith("milvus://"):
        return "http://" + address[len("milvus://") :]
    raise ValueError(f"not a Milvus address: {address!r} (milvus://host:port or milvus-lite:<path>.db)")


class MilvusStore:
    """One catalog in one Milvus (or milvus-lite file), synchronous."""

    def __init__(self, address: str, collection: str, index_kind: str = "flat", token: str = "") -> None:
        self.address = address
        self.lite = address.startswith("milvus-lite:")
        self.collection = collection
        self.index_kind = index_kind
        self.token = token
        self._client: Any = None
        self._open = threading.Lock()
        self.writes = threading.RLock()
        """Held by every write and schema change of this process, so a write never lands on a
        generation being copied away."""
        self._schema: tuple[float, Schema] | None = None
        self._loaded: set[str] = set()
        self._kinds_of: dict[str, dict[str, str]] = {}
        self._unflushed = 0
        self._idle_flush: threading.Timer | None = None
        self.gate = ReadGate()

    @property
    def client(self) -> Any:
        with self._open:
            if self._client is None:
                from pymilvus import MilvusClient

                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # errors are reported by us, once
                timeout = None if self.address.startswith("milvus-lite:") else CONNECT_TIMEOUT_S
                self._client = MilvusClient(uri=uri_of(self.address), token=self.token, timeout=timeout)
                # a milvus-lite server reached over milvus:// needs the same flushing as an embedded one
                self.lite = self.lite or str(self._client.get_server_version()).startswith("milvus_lite")
            return self._client

    def close(self) -> None:
        if self._idle_flush is not None:
            self._idle_flush.cancel()
        with self._open:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self, timeout: float) -> None:
        self.client.list_collections(timeout=timeout)

    # ---- schema ----

    def schema(self, fresh: bool = False) -> Schema:
        cached = self._schema
        if not fresh and cached is not None and time.monotonic() - cached[0] < SCHEMA_TTL_S:
            return cached[1]
        desc = self.client.describe_collection(self.collection)
        physical = str(desc["collection_name"])
        dims = {
            mr.space_of(f["name"]): int(f["params"]["dim"])
            for f in desc["fields"]
            if f["name"].startswith(mr.VECTOR_PREFIX)
        }
        numbers = tuple(
            f["name"][len(mr.NUMBER_PREFIX) :]
            for f in desc["fields"]
            if f["name"].startswith(mr.NUMBER_PREFIX)
        )
        if physical not in self._kinds_of:  # a generation's index kinds never change
            self._kinds_of[physical] = self._kinds(physical, list(dims))
        kinds = self._kinds_of[physical]
        keywords = tuple(
            f["name"][len(mr.KEYWORD_PREFIX) :]
            for f in desc["fields"]
            if f["name"].startswith(mr.KEYWORD_PREFIX)
        )
        schema = Schema(physical, dims, kinds, numbers, keywords)
        if physical not in self._loaded:
            if str(self.client.get_load_state(physical).get("state")) != "Loaded":
                self.client.load_collection(physical)  # a reopened milvus-lite collection comes back released
            self._loaded.add(physical)
        self._schema = (time.monotonic(), schema)
        return schema

    def _kinds(self, physical: str, spaces: Sequence[str]) -> dict[str, str]:
        kinds = {}
        for space in spaces:
            try:
                info = self.client.describe_index(physical, index_name=mr.vector_field(space))
                kinds[space] = str(info.get("index_type", "FLAT")) if info else "FLAT"
            except Exception:
                kinds[space] = "FLAT"
        return kinds

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def create(
        self, dims: Mapping[str, int], keywords: Sequence[str], numbers: Sequence[str] = (PRICE,)
    ) -> None:
        """The first generation behind the catalog's alias."""
        physical = f"{self.collection}{GENERATION}1"
        self._create_physical(physical, dims, {s: self.index_kind for s in dims}, numbers, keywords)
        self.client.create_alias(physical, self.collection)
        self._schema = None

    def _create_physical(
        self,
        physical: str,
        dims: Mapping[str, int],
        kinds: Mapping[str, str],
        numbers: Sequence[str],
        keywords: Sequence[str],
    ) -> None:
        from pymilvus import DataType

        c = self.client
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field(mr.ID, DataType.VARCHAR, is_primary=True, max_length=mr.MAX_ID_BYTES)
        for f in numbers:
            s.add_field(mr.number_field(f), DataType.DOUBLE, nullable=True)
        for f in keywords:
            s.add_field(mr.keyword_field(f), DataType.VARCHAR, max_length=mr.MAX_STRING_BYTES, nullable=True)
        for f in (mr.TAGS, mr.SPACES):
            s.add_field(
                f, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=mr.MAX_ARRAY,
                max_length=mr.MAX_STRING_BYTES,
            )  # fmt: skip
        s.add_field(mr.PAYLOAD, DataType.JSON)
        params = c.prepare_index_params()
        for space, dim in dims.items():
            field = mr.vector_field(space)
            s.add_field(field, DataType.FLOAT_VECTOR, dim=dim)
            index_type, build = INDEX_PARAMS.get(kinds[space].lower(), (kinds[space], {}))
            params.add_index(field, index_name=field, index_type=index_type, metric_type="IP", params=build)
        c.create_collection(physical, schema=s, index_params=params, consistency_level=STRONG)

    def change_spaces(self, add: Mapping[str, int] | None = None, drop: str = "") -> None:
        """The next generation with a space added or dropped, every row copied, the alias switched."""
        with self.writes:
            old = self.schema(fresh=True)
            if not old.physical.startswith(self.collection + GENERATION):
                raise NotFound(f"collection {quoted(self.collection)} is not a generation alias; recreate it")
            generation = int(old.physical.rsplit(GENERATION, 1)[1]) + 1
            physical = f"{self.collection}{GENERATION}{generation}"
            dims = {s: d for s, d in old.dims.items() if s != drop}
            kinds = {s: k for s, k in old.kinds.items() if s != drop}
            for space, dim in (add or {}).items():
                dims[space], kinds[space] = dim, self.index_kind
            if self.client.has_collection(physical):
                self.client.drop_collection(physical)  # a copy an earlier attempt left half done
            self._create_physical(physical, dims, kinds, old.numbers, old.keywords)
            self._copy(old.physical, physical, dims)
            self.client.alter_alias(physical, self.collection)
            self.client.drop_collection(old.physical)
            self._schema = None

    def _copy(self, source: str, target: str, dims: Mapping[str, int]) -> None:
        it = self.client.query_iterator(source, batch_size=COPY_BATCH, filter="", output_fields=["*"])
        try:
            while batch := it.next():
                rows = []
                for row in batch:
                    row = dict(row)
                    row[mr.SPACES] = [s for s in row.get(mr.SPACES) or () if s in dims]
                    for space, dim in dims.items():
                        if mr.vector_field(space) not in row or space not in row[mr.SPACES]:
                            row[mr.vector_field(space)] = [0.0] * dim
                    rows.append(
                        {
                            k: v
                            for k, v in row.items()
                            if not k.startswith(mr.VECTOR_PREFIX) or mr.space_of(k) in dims
                        }
                    )
                self.client.insert(target, rows)
        finally:
            it.close()
        self._after_write(FLUSH_EVERY, target)

    # ---- rows ----

    def rows(self, ids: Sequence[str], fields: Sequence[str], timeout: float | None) -> list[dict[str, Any]]:
        if not ids:
            return []
        expr = f"{mr.ID} in [{', '.join(mr.literal(i) for i in ids)}]"
        with self.gate.read():
            rows = self.client.query(
                self.collection, filter=expr, output_fields=list(fields), timeout=timeout,
                consistency_level=STRONG,
            )  # fmt: skip
        return list(rows)

    def upsert(self, rows: Sequence[dict[str, Any]], timeout: float | None) -> None:
        if rows:
            self.client.upsert(self.collection, list(rows), timeout=timeout)
            self._after_write(len(rows), self.collection)

    def delete(self, ids: Sequence[str], timeout: float | None) -> None:
        if ids:
            self.client.delete(self.collection, ids=list(ids), timeout=timeout)

    def _after_write(self, n: int, collection: str) -> None:
        if not self.lite:
            return  # a cluster seals segments itself; a flush per write would hurt it
        self._unflushed += n
        if self._idle_flush is not None:
            self._idle_flush.cancel()
        if self._unflushed >= FLUSH_EVERY:
            self._flush(collection)
        else:
            self._idle_flush = threading.Timer(FLUSH_IDLE_S, self._flush, (collection,))
            self._idle_flush.daemon = True
            self._idle_flush.start()

    def _flush(self, collection: str) -> None:
        with self.writes, self.gate.alone():
            if self._unflushed and self._client is not None:
                try:
                    self.client.flush(collection)
                except Exception as exc:  # the rows are durable already; the next write flushes again
                    logging.getLogger(__name__).warning(
                        "milvus-lite flush failed", extra={"error": str(exc)[:200]}
                    )
                    return
                self._unflushed = 0

    def search(
        self,
        space: str,
        vectors: list[list[float]],
        k: int,
        expr: str,
        fields: Sequence[str],
        timeout: float | None,
    ) -> list[list[dict[str, Any]]]:
        if self._unflushed:
            self._flush(self.collection)  # rows not yet flushed are searched one by one on milvus-lite
        schema = self.schema()
        if space not in schema.dims:
            raise InvalidInput(
                f"index rejected the input: collection {quoted(self.collection)} has no vector space "
                f"{quoted(space)}; its spaces: {list(schema.dims)}"
            )
        kind = schema.kinds.get(space, "FLAT")
        with self.gate.read():
            result = self.client.search(
                self.collection, data=vectors, anns_field=mr.vector_field(space), limit=k, filter=expr,
                output_fields=list(fields), timeout=timeout, consistency_level=STRONG,
                search_params={"metric_type": "IP", "params": SEARCH_PARAMS.get(kind, {})},
            )  # fmt: skip
        return [list(hits) for hits in result]

    def count(self) -> int:
        with self.gate.read():
            rows = self.client.query(
                self.collection, filter="", output_fields=["count(*)"], consistency_level=STRONG
            )
        return int(rows[0]["count(*)"]) if rows else 0

    def set_alias(self, alias: str, collection: str) -> str:
        """Point ``alias`` at ``collection``'s current generation; returns what it pointed to before."""
        physical = str(self.client.describe_collection(collection)["collection_name"])
        previous = self.aliases().get(alias, "")
        if previous:
            self.client.alter_alias(physical, alias)
        else:
            self.client.create_alias(physical, alias)
        return previous

    def aliases(self) -> dict[str, str]:
        out = {}
        for alias in self.client.list_aliases().get("aliases", []):
            out[str(alias)] = str(self.client.describe_alias(alias)["collection_name"])
        return out
