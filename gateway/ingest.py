"""Local ingestion: the one way the gateway reads an image from its own disk (``image_path`` in
UpsertProducts), confined to configured ingest roots.

A remote caller must not be able to make the gateway read what it pleases, or learn what exists. So a
path is read only when, with every symlink resolved, it lies under an ingest root (none are configured
by default: then ``image_path`` is refused for everyone and callers send ``image_bytes``, as
``vitrine ingest`` does); it must be a regular file (never a FIFO, device, socket or directory), opened
without following a final symlink and without blocking (``O_NONBLOCK``, so a FIFO cannot hold a thread),
its size checked with ``fstat`` before a byte is read, and the read bounded in time and done off the
event loop. Every refusal reads the same (``REFUSED``), whether the path is missing, outside the roots,
unreadable, special or too large.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import InvalidInput
from vitrine.contracts import MAX_IMAGE_BYTES

REFUSED = (
    "image_path is not readable by this gateway: it must name a regular image file of at most "
    f"{MAX_IMAGE_BYTES} bytes under one of the gateway's ingest roots; send image_bytes instead"
)
READ_TIMEOUT_S = 10.0
"""Longest a local read may take; a slow or stuck file system is refused like any other path."""


class Refused(Exception):
    """Why a path was refused, for the gateway's own logs; callers only ever see ``REFUSED``."""


class IngestRoots:
    """The directories ``image_path`` may read from; empty refuses every path."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots if str(r))

    def resolve(self, ref: str) -> Path:
        """The real path behind ``ref`` (absolute, or relative to a root), only if it lies under a root."""
        if not self.roots or not ref or "\x00" in ref:
            raise Refused("no ingest roots" if not self.roots else "empty or NUL path")
        candidates = [Path(ref)] if os.path.isabs(ref) else [root / ref for root in self.roots]
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))
            if any(real.is_relative_to(root) for root in self.roots):
                return real
        raise Refused("outside the ingest roots")

    def read_sync(self, ref: str) -> bytes:
        path = self.resolve(ref)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise Refused("not a regular file")
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise Refused(exc.strerror or "cannot open") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):  # swapped after the lstat
                raise Refused("not a regular file")
            if info.st_size > MAX_IMAGE_BYTES:
                raise Refused("too large")
            data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:  # grew after the fstat
            raise Refused("too large")
        return data

    async def read(self, ref: str, timeout_s: float = READ_TIMEOUT_S) -> bytes:
        """The file's bytes, read in a worker thread within ``timeout_s``; ``InvalidInput(REFUSED)``
        for any path that may not or cannot be read."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.read_sync, ref), timeout_s)
        except (TimeoutError, Refused, OSError, ValueError):
            raise InvalidInput(REFUSED) from None
