"""Where a served request's time went, from Triton's own request traces.

Triton started with ``--trace-config level=TIMESTAMPS`` (``operations.stack.trace_args``) writes, for
every request, the timestamps of each model it ran: an ensemble's trace and one child trace per step
(``parent_id``), each with ``QUEUE_START`` (entered the model's queue), ``COMPUTE_START`` and
``COMPUTE_END`` (its execution, which a batch shares) and ``REQUEST_START``/``REQUEST_END``. From those,
per request: the time queued in front of each model, the time computing in it, and what remains of the
ensemble's span (hand-offs between steps). A claimed stall is a request whose time sits somewhere here.

``python -m loadtest.trace TRACE_FILE [--slowest N]`` prints the per-model table and the slowest requests.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitrine.measure import percentile
from vitrine.tables import markdown_table

QUEUE_START, COMPUTE_START, COMPUTE_END = "QUEUE_START", "COMPUTE_START", "COMPUTE_END"
REQUEST_START, REQUEST_END = "REQUEST_START", "REQUEST_END"


@dataclass
class Span:
    """One traced request to one model."""

    id: int
    model: str = ""
    parent_id: int = 0
    ns: dict[str, int] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    def ms(self, start: str, end: str) -> float | None:
        if start in self.ns and end in self.ns:
            return (self.ns[end] - self.ns[start]) / 1e6
        return None

    @property
    def total_ms(self) -> float | None:
        return self.ms(REQUEST_START, REQUEST_END)

    @property
    def queue_ms(self) -> float | None:
        return self.ms(QUEUE_START, COMPUTE_START)

    @property
    def compute_ms(self) -> float | None:
        return self.ms(COMPUTE_START, COMPUTE_END)


def trace_files(path: Path) -> list[Path]:
    """The trace file and the chunks Triton wrote beside it (``<path>.0``, ``<path>.1``, ...)."""
    path = Path(path)
    chunks = sorted(
        (p for p in path.parent.glob(path.name + ".*") if re.fullmatch(r"\d+", p.suffix[1:])),
        key=lambda p: int(p.suffix[1:]),
    )
    return [*chunks, *([path] if path.is_file() else [])]


def read_spans(paths: Iterable[Path]) -> list[Span]:
    """Every request's span, children attached to their ensemble's; returns the top-level spans. Triton
    may write one trace id in several objects (its name first, timestamps later): they are merged."""
    by_id: dict[int, Span] = {}
    for path in paths:
        text = path.read_text().strip()
        if not text:
            continue
        for obj in json.loads(text):
            span = by_id.setdefault(int(obj["id"]), Span(int(obj["id"])))
            span.model = obj.get("model_name", span.model)
            span.parent_id = int(obj.get("parent_id", span.parent_id) or 0)
            for stamp in obj.get("timestamps", []):
                span.ns.setdefault(stamp["name"], int(stamp["ns"]))
    top = []
    for span in by_id.values():
        parent = by_id.get(span.parent_id) if span.parent_id else None
        if parent is not None:
            parent.children.append(span)
        else:
            top.append(span)
    for span in by_id.values():
        span.children.sort(key=lambda c: c.ns.get(REQUEST_START, 0))
    return sorted(top, key=lambda s: s.ns.get(REQUEST_START, 0))


def handoff_ms(span: Span) -> float | None:
    """An ensemble's span not spent inside any step, from each step's start to the end of its compute
    (scheduling and tensor hand-off between steps; a step's own release is recorded after its result
    has moved on, so its ``REQUEST_END`` is not used)."""
    total = span.total_ms
    inner = [c.ms(REQUEST_START, COMPUTE_END) for c in span.children]
    if total is None or not span.children or any(x is None for x in inner):
        return None
    return total - sum(x for x in inner if x is not None)


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f} / {max(values):.1f}"


def summary(spans: Sequence[Span], slowest: int = 5) -> str:
    """Per model: queued and computing, p50 / p95 / max ms; per ensemble the hand-off; then the slowest
    top-level requests, step by step."""
    rows: dict[str, dict[str, list[float]]] = {}

    def add(model: str, kind: str, value: float | None) -> None:
        if value is not None:
            rows.setdefault(model, {}).setdefault(kind, []).append(value)

    for span in spans:
        add(span.model, "total", span.total_ms)
        add(span.model, "handoff", handoff_ms(span))
        for child in span.children:
            add(child.model, "total", child.total_ms)
            add(child.model, "queue", child.queue_ms)
            add(child.model, "compute", child.compute_ms)
        if not span.children:
            add(span.model, "queue", span.queue_ms)
            add(span.model, "compute", span.compute_ms)
    headers = ["model", "requests", "span p50 / p95 / max ms", "queued p50 / p95 / max",
               "computing p50 / p95 / max", "ensemble hand-off p50 / p95 / max"]  # fmt: skip
    cells = [
        [model, len(kinds.get("total", [])),
         *(_stats(kinds.get(kind, [])) for kind in ("total", "queue", "compute", "handoff"))]
        for model, kinds in rows.items()
    ]  # fmt: skip
    lines = markdown_table(headers, cells, "lr")
    ranked = sorted((s for s in spans if s.total_ms is not None), key=lambda s: -(s.total_ms or 0.0))
    if slowest and ranked:
        lines += ["", f"Slowest {min(slowest, len(ranked))} of {len(ranked)} requests (ms):", ""]
        for span in ranked[:slowest]:
            parts = [
                f"{c.model} queued {c.queue_ms or 0:.1f} computing {c.compute_ms or 0:.1f}"
                for c in span.children
            ] or [f"queued {span.queue_ms or 0:.1f} computing {span.compute_ms or 0:.1f}"]
            handoff = handoff_ms(span)
            tail = f"; hand-off {handoff:.1f}" if handoff is not None else ""
            lines.append(f"- {span.model} {span.total_ms:.1f}: " + "; ".join(parts) + tail)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.trace", description=__doc__)
    parser.add_argument("trace", type=Path, help="the file given to --trace-config triton,file=...")
    parser.add_argument("--slowest", type=int, default=5)
    ns = parser.parse_args(argv)
    files = trace_files(ns.trace)
    if not files:
        parser.error(f"no trace at {ns.trace} (nor {ns.trace}.0, ...): was Triton started with tracing?")
    print(summary(read_spans(files), ns.slowest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
