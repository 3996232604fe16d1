"""The CPU encoder's thread budget: every core alone, a share while a sibling instance computes."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from model_repository.runtime import AdaptiveSession, BusyBoard


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Sequence[Any]:
        self.calls.append(self.name)
        return []


def _hold(directory: str, started: Any, release: Any) -> None:
    """A sibling instance in another process that computes until told to stop."""
    board = BusyBoard(directory, "sibling")
    with board.running():
        started.set()
        release.wait(30)


def _session(directory: str, calls: list[str], memory_ns: int = 250_000_000) -> AdaptiveSession:
    board = BusyBoard(directory, "me")
    return AdaptiveSession(Recorder("wide", calls), Recorder("narrow", calls), board, memory_ns=memory_ns)


def test_a_lone_request_runs_on_every_core(tmp_path):
    calls: list[str] = []
    session = _session(str(tmp_path), calls)
    for _ in range(3):
        with session.executing():
            session.run(None, {})
    assert calls == ["wide", "wide", "wide"]


def test_a_request_beside_a_computing_sibling_runs_narrow_and_stays_narrow_while_load_lasts(tmp_path):
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    sibling = ctx.Process(target=_hold, args=(str(tmp_path), started, release))
    sibling.start()
    try:
        assert started.wait(30)
        calls: list[str] = []
        session = _session(str(tmp_path), calls, memory_ns=2_000_000_000)
        with session.executing():
            session.run(None, {})
        release.set()
        sibling.join(30)
        with session.executing():  # the sibling has stopped, but the load was concurrent a moment ago
            session.run(None, {})
        assert calls == ["narrow", "narrow"]
        time.sleep(2.1)
        with session.executing():  # the overlap is forgotten: alone again
            session.run(None, {})
        assert calls[-1] == "wide"
    finally:
        release.set()
        sibling.join(30)


def test_a_dead_siblings_file_is_removed_and_never_reads_busy(tmp_path):
    stale = tmp_path / "gone-999999999"
    stale.write_bytes(b"")
    live = tmp_path / f"alive-{os.getppid()}"
    live.write_bytes(b"")
    board = BusyBoard(tmp_path, "me")
    assert not stale.exists()  # no such process: its file goes
    assert live.exists()  # a live process's file stays (it may be idle between requests)
    assert board.others_busy() is False
