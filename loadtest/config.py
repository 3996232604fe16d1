"""Load-test settings, one frozen dataclass per command; flags and LOADTEST_* variables derive from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

ENV_PREFIX = "LOADTEST"


class LoadTarget(str, Enum):
    GATEWAY = "gateway"  # the public API: what shoppers see
    TRITON = "triton"  # the model tier alone, through its ensembles


@dataclass(frozen=True)
class RunConfig:
    target: LoadTarget = field(default=LoadTarget.GATEWAY, metadata={"help": "what to load"})
    gateway: str = field(
        default="127.0.0.1:50050",
        metadata={"help": "gateway gRPC address; several comma-separated are used round robin"},
    )
    triton: str = field(default="127.0.0.1:8001", metadata={"help": "Triton gRPC address"})
    users: int = field(default=10, metadata={"help": "concurrent simulated users"})
    spawn_rate: float = field(default=10.0, metadata={"help": "users started per second"})
    duration_s: float = field(default=60.0, metadata={"help": "run time (per step in step mode)"})
    rate: float = field(
        default=0.0,
        metadata={"help": "total requests/s, paced across users; 0: each user sends back to back"},
    )
    mix: str = field(default="", metadata={"help": "scenario=weight,... (default: the target's full mix)"})
    p95_ms: float = field(default=100.0, metadata={"help": "objective: p95 latency below this"})
    max_error_rate: float = field(default=0.001, metadata={"help": "objective: failed fraction at most this"})
    out: str = field(default="var/loadtest/run", metadata={"help": "report directory (CSV, HTML, summary)"})
    catalog: str = field(
        default="", metadata={"help": "catalog JSONL the stack serves (default: the seeded demo vocabulary)"}
    )
    catalog_size: int = field(default=200, metadata={"help": "products generated when no catalog is given"})
    seed: int = field(default=0, metadata={"help": "seed of the generated vocabulary"})
    timeout_s: float = field(default=10.0, metadata={"help": "deadline of each call"})
    top_k: int = field(default=10, metadata={"help": "results per search"})
    weights: str = field(
        default="", metadata={"help": "weights the stack serves, for the report (default: from --artifacts)"}
    )
    artifacts: str = field(default="", metadata={"help": "export directory whose manifest names the weights"})
    triton_metrics: str = field(
        default="", metadata={"help": "Triton metrics URL: per-model queue/compute/batch around each run"}
    )
    gateway_metrics: str = field(
        default="", metadata={"help": "gateway metrics URL: its server-side latency around each run"}
    )
    processes: int = field(
        default=0,
        metadata={"help": "Locust worker processes (--processes); 0: one process, -1: one per core"},
    )
    max_generator_share: float = field(
        default=0.25,
        metadata={"help": "flag a run whose load generator used more than this share of the machine's CPU"},
    )


@dataclass(frozen=True)
class StepConfig(RunConfig):
    out: str = field(default="var/loadtest/step", metadata={"help": "report directory (one folder per step)"})
    duration_s: float = field(default=30.0, metadata={"help": "measured time per step"})
    start_rate: float = field(default=2.0, metadata={"help": "first offered rate (requests/s)"})
    factor: float = field(default=1.5, metadata={"help": "each step offers this many times the last"})
    max_rate: float = field(default=500.0, metadata={"help": "never offer more than this"})
    max_steps: int = field(default=8, metadata={"help": "most steps, bisection included"})
    refine: int = field(default=2, metadata={"help": "bisection steps between last pass and first miss"})
    interval_s: float = field(
        default=0.5, metadata={"help": "each user's pacing interval; users = rate x interval"}
    )


@dataclass(frozen=True)
class ObjectiveConfig(StepConfig):
    out: str = field(default="var/loadtest/objective", metadata={"help": "report directory"})
    rerank_rates: tuple[float, ...] = field(
        default=(1.0, 2.0), metadata={"help": "fixed rates (requests/s) for the re-rank 10 and 50 runs"}
    )
    rerank_duration_s: float = field(default=60.0, metadata={"help": "measured time of each re-rank run"})
    warmup_s: float = field(
        default=15.0, metadata={"help": "unmeasured traffic of every scenario first (0: none)"}
    )
    rerank_interval_s: float = field(
        default=3.0, metadata={"help": "pacing interval of re-rank users (above their latency)"}
    )


class Arrival(str, Enum):
    POISSON = "poisson"  # exponential gaps: the bursts independent shoppers make
    UNIFORM = "uniform"  # evenly spaced: the gentlest load for a rate


@dataclass(frozen=True)
class OpenLoopConfig:
    """The light open-loop generator (``python -m loadtest openloop``): gateway scenarios only."""

    gateway: str = field(
        default="127.0.0.1:50050",
        metadata={"help": "gateway gRPC address; several comma-separated are used round robin"},
    )
    rate: float = field(default=20.0, metadata={"help": "offered requests/s (first rate with --step)"})
    duration_s: float = field(default=30.0, metadata={"help": "scheduled time (per step with --step)"})
    arrival: Arrival = field(default=Arrival.POISSON, metadata={"help": "arrival process"})
    channels: int = field(
        default=1,
        metadata={
            "help": "gRPC channels (connections) the requests are spread over, round robin: as many "
            "as a Locust run has users reproduces its connection pattern"
        },
    )
    mix: str = field(default="text=1", metadata={"help": "gateway scenario=weight,..."})
    step: bool = field(default=False, metadata={"help": "raise the rate until the objective breaks"})
    factor: float = field(
        default=1.5, metadata={"help": "with --step: each step offers this many times the last"}
    )
    max_rate: float = field(default=1000.0, metadata={"help": "with --step: never offer more than this"})
    max_steps: int = field(default=10, metadata={"help": "with --step: most steps, bisection included"})
    refine: int = field(default=2, metadata={"help": "with --step: bisection steps at the edge"})
    p95_ms: float = field(default=100.0, metadata={"help": "objective: p95 latency below this"})
    max_error_rate: float = field(default=0.001, metadata={"help": "objective: failed fraction at most this"})
    out: str = field(default="var/loadtest/openloop", metadata={"help": "report directory"})
    catalog: str = field(default="", metadata={"help": "catalog JSONL the stack serves (default: generated)"})
    catalog_size: int = field(default=200, metadata={"help": "products generated when no catalog is given"})
    seed: int = field(default=0, metadata={"help": "seed of the vocabulary, the arrivals and the mix"})
    timeout_s: float = field(default=10.0, metadata={"help": "deadline of each call"})
    top_k: int = field(default=10, metadata={"help": "results per search"})
    gateway_metrics: str = field(
        default="", metadata={"help": "gateway metrics URL: its server-side latency around each run"}
    )
    max_generator_share: float = field(
        default=0.25,
        metadata={"help": "flag a run whose load generator used more than this share of the machine's CPU"},
    )
    weights: str = field(default="", metadata={"help": "weights the stack serves, for the report"})
    artifacts: str = field(default="", metadata={"help": "export directory whose manifest names the weights"})


@dataclass(frozen=True)
class OpenLoopObjectiveConfig(OpenLoopConfig):
    """The objective with the open-loop generator (``python -m loadtest openloop-objective``): the
    text-search edge by step search, then re-rank 10 and 50 at fixed offered rates, Poisson arrivals."""

    out: str = field(default="var/loadtest/objective-openloop", metadata={"help": "report directory"})
    rerank_rates: tuple[float, ...] = field(
        default=(1.0, 2.0, 4.0), metadata={"help": "fixed offered rates (requests/s) of the re-rank runs"}
    )
    rerank_duration_s: float = field(default=30.0, metadata={"help": "scheduled time of each re-rank run"})
    warmup_s: float = field(
        default=10.0, metadata={"help": "unmeasured traffic of each scenario first, at 2 req/s (0: none)"}
    )
    triton_metrics: str = field(
        default="", metadata={"help": "Triton metrics URL: its per-model counters around each run"}
    )


@dataclass(frozen=True)
class CompareConfig(RunConfig):
    """Locust and the open-loop generator on the same paced steps, one after the other per step."""

    out: str = field(default="var/loadtest/compare", metadata={"help": "report directory"})
    mix: str = field(default="text=1", metadata={"help": "gateway scenario=weight,..."})
    rates: tuple[float, ...] = field(default=(8.0, 16.0, 32.0), metadata={"help": "offered rates (req/s)"})
    duration_s: float = field(default=30.0, metadata={"help": "measured time of each run"})
    interval_s: float = field(
        default=0.5, metadata={"help": "each Locust user's pacing interval; users = rate x interval"}
    )
    arrival: Arrival = field(default=Arrival.POISSON, metadata={"help": "open-loop arrival process"})
