"""Locust users for Vitrine: the gateway's public API and Triton's ensembles, over gRPC.

Run through ``python -m loadtest`` (which sets the options below and judges the result); it also works
with plain ``locust -f loadtest/locustfile.py GatewayUser --vitrine-mix text=3,image=1 ...``.

Each scenario is one request named in the statistics, so the report shows latency and failures per kind
of traffic; ``--vitrine-mix`` weights them. Search responses carry per-stage timings; they are collected
and written beside the CSV, which is how a run says which stage dominates.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import tritonclient.grpc as triton
from locust import User, constant_throughput, events
from locust.env import Environment
from locust.exception import StopUser

from loadtest import gateway_requests, grpc_user
from loadtest.config import LoadTarget
from loadtest.data import QueryData
from loadtest.scenarios import mix_for
from vitrine import triton as triton_request
from vitrine.contracts import EMBED_IMAGE_IO, EMBED_TEXT_IO, RERANK_IO, EnsembleIO, Tensor
from vitrine.gateway.v1 import gateway_pb2 as pb
from vitrine.gateway.v1 import gateway_pb2_grpc as pb_grpc

log = logging.getLogger("loadtest")
_data: QueryData | None = None
_stages: dict[str, list[float]] = defaultdict(list)
_reset_on_spawn = False
_open: list[Callable[[], None]] = []
"""Close functions of every channel opened; a channel left open keeps the process from exiting."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("vitrine")
    group.add_argument("--vitrine-mix", default="", help="scenario=weight,... (default: all scenarios)")
    group.add_argument(
        "--vitrine-user-rate", type=float, default=0.0, help="requests/s per user; 0 = no pause"
    )
    group.add_argument(
        "--vitrine-catalog", default="", help="catalog JSONL whose vocabulary and photos to use"
    )
    group.add_argument("--vitrine-catalog-size", type=int, default=200)
    group.add_argument("--vitrine-seed", type=int, default=0)
    group.add_argument("--vitrine-top-k", type=int, default=10)
    group.add_argument("--vitrine-timeout-s", type=float, default=10.0)
    group.add_argument("--vitrine-stages-out", default="", help="where to write per-stage timings (JSON)")


def _record_stages(response: pb.SearchResponse) -> None:
    for timing in response.timings:
        _stages[timing.stage].append(timing.ms)


def stages_file(stages_out: str, pid: int) -> Path:
    """Where one Locust process leaves its raw stage timings; with ``--processes`` every worker writes
    its own and the runner merges them (percentiles cannot be merged from per-process summaries)."""
    return Path(f"{stages_out}.{pid}.raw")


class _VitrineUser(User):
    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self.rate = float(getattr(options, "vitrine_user_rate", 0.0) or 0.0)
        self.timeout = float(getattr(options, "vitrine_timeout_s", 10.0))
        self.top_k = int(getattr(options, "vitrine_top_k", 10))
        self.rng = random.Random(random.getrandbits(32))
        assert _data is not None, "query data is loaded on Locust's init event"
        self.data: QueryData = _data

    def wait_time(self) -> float:
        """Constant throughput per user, so the offered rate is users x rate whatever the latency."""
        return constant_throughput(self.rate)(self) if self.rate > 0 else 0.0

    def on_start(self) -> None:
        # Users spawned together would otherwise fire in lockstep bursts at every pacing interval.
        if self.rate > 0:
            self._sleep(self.rng.uniform(0, 1.0 / self.rate))

    def _sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)


class GatewayUser(_VitrineUser):
    """A shop front calling the gateway: text, image and hybrid search, re-rank depths, filters.

    Requests come from ``loadtest.gateway_requests``, the builder the open-loop generator uses too."""

    def on_start(self) -> None:
        self.channel = grpc_user.intercepted_channel(self.host or "", self.environment.events.request.fire)
        _open.append(self.channel.close)
        self.stub = pb_grpc.ProductSearchStub(self.channel)
        super().on_start()

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, scenario: str) -> None:
        method, request = gateway_requests.build(scenario, self.data, self.rng, self.top_k)
        try:
            response = getattr(self.stub, method)(
                request, timeout=self.timeout, metadata=grpc_user.named(scenario)
            )
        except Exception:  # already reported as a failure by the interceptor
            return
        if method == gateway_requests.SEARCH:
            _record_stages(response)

    def text(self) -> None:
        self.call("text")

    def text_rerank10(self) -> None:
        self.call("text_rerank10")

    def text_rerank50(self) -> None:
        self.call("text_rerank50")

    def image(self) -> None:
        self.call("image")

    def hybrid(self) -> None:
        self.call("hybrid")

    def filtered(self) -> None:
        self.call("filtered")

    def similar(self) -> None:
        self.call("similar")

    def recommend(self) -> None:
        self.call("recommend")


class TritonUser(_VitrineUser):
    """A client of Triton's ensembles directly: what the model tier alone sustains, without the gateway."""

    def on_start(self) -> None:
        self.client = triton.InferenceServerClient(self.host or "")
        _open.append(self.client.close)
        try:
            for io in (EMBED_TEXT_IO, EMBED_IMAGE_IO, RERANK_IO):
                if not self.client.is_model_ready(io.model.value, client_timeout=self.timeout):
                    raise RuntimeError(f"model {io.model.value} is not ready")
        except Exception as exc:
            # Log a plain message and stop this user: a gRPC error kept alive in Locust's records is
            # collected at interpreter exit, where grpc under gevent hangs the process.
            message = str(exc)
            del exc
            self.client.close()
            log.error("user cannot start: Triton at %s: %s", self.host, message)
            raise StopUser() from None
        super().on_start()

    def on_stop(self) -> None:
        self.client.close()

    def _infer(self, name: str, io: EnsembleIO, values: dict[Tensor, list[Any]]) -> None:
        with grpc_user.timed(self.environment.events.request.fire, name) as report:
            result = self.client.infer(
                io.model.value,
                triton_request.inputs(io, values),
                outputs=triton_request.outputs(io),
                client_timeout=self.timeout,
            )
            report["length"] = result.get_response().ByteSize()

    def embed_text(self) -> None:
        self._infer("embed_text", EMBED_TEXT_IO, {Tensor.TEXT: [self.data.text(self.rng)]})

    def embed_image(self) -> None:
        self._infer("embed_image", EMBED_IMAGE_IO, {Tensor.IMAGE: [self.data.image(self.rng)]})

    def _rerank(self, name: str, depth: int) -> None:
        values: dict[Tensor, list[Any]] = {
            Tensor.QUERY: [self.data.text(self.rng)],
            Tensor.PASSAGES: self.data.passages(self.rng, depth),
        }
        self._infer(name, RERANK_IO, values)

    def rerank10(self) -> None:
        self._rerank("rerank10", 10)

    def rerank50(self) -> None:
        self._rerank("rerank50", 50)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _data, _reset_on_spawn
    options = environment.parsed_options
    if options is None:
        return
    _reset_on_spawn = bool(options.reset_stats)
    if options.vitrine_catalog:
        _data = QueryData.from_catalog(options.vitrine_catalog, seed=options.vitrine_seed)
    else:
        _data = QueryData.generated(options.vitrine_catalog_size, options.vitrine_seed)
    # Loading blocked the event loop; without refreshing its clock, gevent dates the --run-time timer
    # from before the load and the run ends seconds early.
    gevent.get_hub().loop.update_now()
    chosen = {cls.__name__ for cls in environment.user_classes}
    for cls, target in ((GatewayUser, LoadTarget.GATEWAY), (TritonUser, LoadTarget.TRITON)):
        if cls.__name__ in chosen:
            # Locust's own form of weights: each task listed as many times as it weighs.
            weights = mix_for(target, options.vitrine_mix)
            cls.tasks = [getattr(cls, name) for name, weight in weights.items() for _ in range(weight)]


@events.spawning_complete.add_listener
def _on_spawned(**_: Any) -> None:
    # --reset-stats drops the ramp from Locust's figures; the stage timings follow suit.
    if _reset_on_spawn:
        _stages.clear()


@events.quitting.add_listener
def _on_quit(environment: Environment, **_: Any) -> None:
    while _open:
        _open.pop()()
    # Free closed channels now, while gevent and grpc still run normally: the same objects collected
    # during interpreter shutdown can hang the process (seen after failed connections).
    gc.collect()
    options = environment.parsed_options
    if options is not None and options.vitrine_stages_out and _stages:
        stages_file(options.vitrine_stages_out, os.getpid()).write_text(json.dumps(dict(_stages)))
