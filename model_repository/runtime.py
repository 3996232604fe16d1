"""onnxruntime sessions and request batching for the CPU target's encoder model, without Triton.

Kept apart from the Python-backend shell so the batching arithmetic (group equal shapes, one run per
group, split back per request, per-request errors) is unit-tested in-process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from vitrine.torchscript import TorchSession, cuda_unavailable


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count: containers and taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def make_session(path: str | os.PathLike[str], threads: int = 0) -> ort.InferenceSession:
    """A CPU session sized to the cores, with idle threads parked instead of spinning.

    Several sessions share the host (one per encoder, plus FAISS next door); onnxruntime's default
    spin-waiting threads steal each other's cores, which measured ~30% slower on 2 cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class BusyBoard:
    """Which instances of one model are computing right now, across the Python-backend stub processes.

    Each instance holds an exclusive ``flock`` on a file of its own while it executes; another instance
    is busy while a non-blocking shared lock on its file fails. The kernel drops a dead process's lock,
    so a crashed instance never reads as busy; its file (named after its process id) is removed by the
    next instance to start.
    """

    def __init__(self, directory: str | os.PathLike[str], name: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.iterdir():
            if not _alive(stale.name.rsplit("-", 1)[-1]):
                stale.unlink(missing_ok=True)
        self.path = self.directory / f"{name}-{os.getpid()}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._siblings: list[Path] = []
        self._listed = 0

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike[str], instance: str) -> BusyBoard:
        """The board every instance of the model served from ``model_dir`` shares (all its versions)."""
        key = hashlib.sha1(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
        return cls(Path(tempfile.gettempdir()) / "vitrine-busy" / key, instance)

    def others_busy(self) -> bool:
        now = time.monotonic_ns()
        if now - self._listed > 1_000_000_000:  # siblings start and stop rarely: list them once a second
            self._siblings = [p for p in self.directory.iterdir() if p != self.path]
            self._listed = now
        return any(_held(p) for p in self._siblings)

    @contextmanager
    def running(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _held(path: Path) -> bool:
    """True when another process holds a lock on ``path`` (a missing file is not held)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class AdaptiveSession:
    """A CPU session whose thread budget follows the load on its model's instances.

    A request that runs alone gets every core (``wide``); once this instance has seen a sibling instance
    computing at the same time as itself, it runs on ``narrow`` (the cores divided among the instances)
    until ``memory_ns`` pass without seeing that again. Under concurrent load the instances therefore
    stay narrow through the short gaps between their requests, and busy intra-op threads never outnumber
    the cores; requests that follow one another (even on alternating instances) never overlap, so they
    keep every core. Two sessions of one graph cost its weights twice in memory.

    The caller holds :meth:`executing` around a whole request set; each :meth:`run` inside chooses
    afresh, so a long request adapts between its sub-batches.
    """

    def __init__(
        self, wide: Session, narrow: Session, board: BusyBoard, memory_ns: int = 250_000_000
    ) -> None:
        self.wide, self.narrow, self.board = wide, narrow, board
        self.memory_ns = memory_ns
        self._shared_until = 0

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], instances: int, board: BusyBoard, cores: int = 0
    ) -> AdaptiveSession:
        cores = cores or available_cores()
        narrow_threads = max(1, cores // max(1, instances))
        return cls(make_session(path, cores), make_session(path, narrow_threads), board)

    def _shared(self) -> bool:
        now = time.monotonic_ns()
        if self.board.others_busy():
            self._shared_until = now + self.memory_ns
        return now < self._shared_until

    @contextmanager
    def executing(self) -> Iterator[None]:
        with self.board.running():
            try:
                yield
            finally:
                self._shared()  # a sibling still computing as this set ends counts as overlap too

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Sequence[Any]:
        session = self.narrow if self._shared() else self.wide
        return session.run(output_names, input_feed)


class DeviceUnavailable(RuntimeError):
    """A GPU session where onnxruntime has no CUDA provider; the message says what to install."""


class Session(Protocol):
    """What the batching runs: onnxruntime's ``run(output_names, feed)``, or ``vitrine.torchscript
    .TorchSession``."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Sequence[Any]: ...


def make_gpu_session(
    path: str | os.PathLike[str], device_id: int = 0, torch_fallback: str | os.PathLike[str] | None = None
) -> Session:
    """A session on one GPU (the Python-backend instance's device), for the GPU-embedded target:
    onnxruntime's CUDA provider where ``onnxruntime-gpu`` is installed, else the export's TorchScript
    fp16 trace (``torch_fallback``) on PyTorch CUDA.

    Refusing plainly beats a silent CPU fallback that would serve GPU traffic from two cores."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    reasons = [
        f"onnxruntime {ort.__version__} has no CUDA provider (available: "
        f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
    ]
    if torch_fallback is None or not Path(torch_fallback).is_file():
        reasons.append("no PyTorch fp16 trace in the repository (export with --torch-fp16 on a CUDA host)")
    elif (why := cuda_unavailable()) is not None:
        reasons.append(why)
    elif device_id != 0:
        # A trace keeps the device of tensors made inside forward (traced on cuda:0); loading it onto
        # another GPU would fail per request instead of here.
        reasons.append(f"the PyTorch fp16 trace runs on cuda:0 only, this instance is on cuda:{device_id}")
    else:
        return TorchSession(torch_fallback, f"cuda:{device_id}")
    raise DeviceUnavailable("; ".join(reasons) + " for the gpu-embedded target")


@dataclass(frozen=True)
class Result:
    """One request's outputs, or the message that explains why it could not run."""

    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None


def _batch_size(feed: Mapping[str, np.ndarray]) -> int | str:
    if not feed:
        return "the request has no inputs"
    sizes = {name: arr.shape[0] if arr.ndim else -1 for name, arr in feed.items()}
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{k} {v}" for k, v in sizes.items())
        return f"inputs disagree on the batch size: {listing}"
    return next(iter(sizes.values()))


@dataclass(frozen=True)
class LengthSorting:
    """Run a batch's rows sorted by their real length, ``rows`` at a time, each sub-batch cut to its own
    padded width (a multiple of ``multiple``) instead of the longest row's.

    One re-rank request is already a batch of pairs padded to its longest pair; a transformer's cost grows
    with every padded position, so short pairs padded to a long neighbour pay for tokens that are masked
    out. Trailing padding is masked, so cutting it changes no real token's result. Only for models whose
    outputs have no sequence axis (the cross-encoder's one score per pair).
    """

    mask: str
    """The attention-mask input: its last non-zero column is a row's real length."""
    rows: int = 16
    multiple: int = 8


def _run_length_sorted(
    session: Session,
    outputs: Sequence[str],
    batch: dict[str, np.ndarray],
    sorting: LengthSorting,
) -> list[np.ndarray]:
    mask = batch[sorting.mask]
    n, width = mask.shape
    if n <= 1:
        return list(session.run(list(outputs), batch))
    # Real length = one past the last non-zero mask column (a row with no zero keeps the full width).
    lengths = width - np.argmax(mask[:, ::-1] != 0, axis=1)
    order = np.argsort(lengths, kind="stable")
    merged: list[np.ndarray] = []
    for start in range(0, n, sorting.rows):
        rows = order[start : start + sorting.rows]
        cut = min(width, -(-int(lengths[rows].max()) // sorting.multiple) * sorting.multiple)
        sub = {
            name: (arr[rows, :cut] if arr.ndim == 2 and arr.shape[1] == width else arr[rows])
            for name, arr in batch.items()
        }
        values = session.run(list(outputs), sub)
        if not merged:
            merged = [np.empty((n, *v.shape[1:]), dtype=v.dtype) for v in values]
        for whole, part in zip(merged, values, strict=True):
            whole[rows] = part
    return merged


def run_batched(
    session: Session,
    feeds: Sequence[Mapping[str, np.ndarray]],
    outputs: Sequence[str],
    sorting: LengthSorting | None = None,
) -> list[Result]:
    """Run every request's feed, concatenating requests of equal shapes into one session call.

    Triton's dynamic batcher hands over requests of equal shapes already; grouping here keeps the model
    correct when it does not (batching off, or shapes that differ inside one request set). With
    ``sorting`` the merged rows run in length-sorted sub-batches (:class:`LengthSorting`).
    """
    results: list[Result | None] = [None] * len(feeds)
    groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
    for i, feed in enumerate(feeds):
        size = _batch_size(feed)
        if isinstance(size, str):
            results[i] = Result(error=size)
            continue
        key = tuple((name, tuple(arr.shape[1:])) for name, arr in sorted(feed.items()))
        groups.setdefault(key, []).append(i)

    for members in groups.values():
        names = feeds[members[0]].keys()
        if len(members) == 1:
            batch = {n: np.ascontiguousarray(feeds[members[0]][n]) for n in names}
        else:
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in names}
        try:
            if sorting is not None and sorting.mask in batch and batch[sorting.mask].ndim == 2:
                values = _run_length_sorted(session, outputs, batch, sorting)
            else:
                values = list(session.run(list(outputs), batch))
        except Exception as exc:  # onnxruntime raises its own untyped errors for shape/type faults
            for i in members:
                results[i] = Result(error=f"the model could not run this input: {exc}")
            continue
        offset = 0
        for i in members:
            n = next(iter(feeds[i].values())).shape[0]
            results[i] = Result(
                outputs={name: v[offset : offset + n] for name, v in zip(outputs, values, strict=True)}
            )
            offset += n
    return [r if r is not None else Result(error="request was not run") for r in results]
