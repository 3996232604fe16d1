"""The index engine: one storage, and the registry, writes and reads that share it. Synchronous; run it
off the event loop.

Each part has one job: ``registry.py`` knows which collections and aliases exist (and loads them at
start), ``writes.py`` changes items and takes snapshots, ``reads.py`` answers gets, searches and
statistics. The transport (``servicer.py``) calls the part it needs.
"""

from __future__ import annotations

from index_service.collection import BRUTE_FORCE_MAX
from index_service.reads import Reads
from index_service.registry import Registry
from index_service.storage import Storage
from index_service.writes import Writes


class Engine:
    def __init__(
        self,
        data_dir: str,
        snapshot_every: int = 100_000,
        device: str = "cpu",
        brute_force_max: int = BRUTE_FORCE_MAX,
    ) -> None:
        self.storage = Storage(data_dir)
        self.registry = Registry(self.storage, device, brute_force_max)
        self.writes = Writes(self.registry, self.storage, snapshot_every)
        self.reads = Reads(self.registry)

    def load(self, progress: bool = False) -> None:
        """Rebuild memory from the data directory (the restart path); call once, before serving."""
        self.registry.load(progress)

    def close(self) -> None:
        self.storage.close()
