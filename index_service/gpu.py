"""GPU copies of CPU indexes, used for searching only.  # GPU: runs only where FAISS reports a GPU.

The CPU index stays the source of truth because FAISS GPU indexes can neither remove ids nor be written
to disk. The copy is refreshed lazily: the first search after a change clones the CPU index again, so a
write is still visible to any search issued after its acknowledgement. Filtered searches and HNSW stay
on the CPU (GPU indexes here take no ID selector; HNSW has no GPU form, CAGRA would replace it where the
FAISS build has cuVS).
"""

from __future__ import annotations

import threading

import faiss
import numpy as np


class GpuMirror:
    def __init__(self, device: int = 0) -> None:
        self.device = device
        self.resources = faiss.StandardGpuResources()
        self._lock = threading.Lock()
        self._index: faiss.Index | None = None
        self._version = -1

    def search(
        self, cpu_index: faiss.Index, version: int, queries: np.ndarray, k: int, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._index is None or self._version != version:
                self._index = faiss.index_cpu_to_gpu(self.resources, self.device, cpu_index)
                self._version = version
            index = self._index
            if nprobe and hasattr(faiss, "GpuParameterSpace"):
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
            return index.search(queries, k)
