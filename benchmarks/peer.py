"""``python -m benchmarks.peer``: a client for the peer server Vitrine's latency is compared with,
infinity-emb 0.0.78 serving the same exported checkpoints (CLIP for text and image embeddings, the
cross-encoder for re-ranking) with PyTorch on the CPU.

The peer brings PyTorch, sentence-transformers and a transformers 4.x (4.57 when this was written; the
checkpoints, saved by transformers 5, load in it) that Vitrine's own environment does not share, so it
lives in a virtual environment of its own, outside this one::

    python3.11 -m venv <peer-venv>
    <peer-venv>/bin/pip install torch==2.13.0 'infinity-emb[server,torch]==0.0.78' aiohttp

One server serves both checkpoints (``--model-id`` repeats, each with its ``--served-model-name``);
offline, the directories are read as they are. ``--no-vector-disk-cache`` keeps repeated requests from
being answered out of a cache, ``--no-compile`` turns off the peer's default ``torch.compile`` (eager PyTorch
is what was measured), and torch gets the two threads Vitrine's encoders get::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \\
    <peer-venv>/bin/infinity_emb v2 \\
        --model-id <artifacts>/checkpoints/clip --served-model-name clip \\
        --model-id <artifacts>/checkpoints/cross_encoder --served-model-name cross-encoder \\
        --engine torch --device cpu --dtype float32 --batch-size 32 \\
        --no-compile --no-bettertransformer --no-vector-disk-cache \\
        --host 127.0.0.1 --port 7997

Start-up warms each model at batch 32 (minutes on two busy cores); ``GET /models`` answers once both are
ready. Then ``python -m benchmarks.peer --url http://127.0.0.1:7997`` sends one request of each kind and
prints its latency. Images travel inside the request as ``data:image/jpeg;base64,...`` URIs: the peer refuses
to fetch from loopback and private addresses (``INFINITY_MEDIA_URL_BLACKLIST``), and a data URI spares
the measurement a download. :class:`PeerClient` keeps one keep-alive connection per thread, so closed
loops may share one client across threads.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

CLIP_MODEL = "clip"
RERANK_MODEL = "cross-encoder"

_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class PeerError(RuntimeError):
    """The peer answered a request with something other than 200, or with a body we cannot read."""

    def __init__(self, path: str, status: int, body: str) -> None:
        super().__init__(f"peer answered POST {path} with HTTP {status}: {body[:500]}")
        self.path = path
        self.status = status
        self.body = body


class PeerClient:
    """Text and image embeddings and re-ranking from an infinity-emb server, over one keep-alive HTTP
    connection per calling thread."""

    def __init__(
        self,
        url: str,
        *,
        clip_model: str = CLIP_MODEL,
        rerank_model: str = RERANK_MODEL,
        timeout_s: float = 120.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.clip_model = clip_model
        self.rerank_model = rerank_model
        self.timeout_s = timeout_s
        self._local = threading.local()

    def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """CLIP text embeddings, one per text, in order."""
        body = {"model": self.clip_model, "modality": "text", "input": list(texts)}
        return _embeddings(self._post("/embeddings", body))

    def embed_images(self, jpegs: Sequence[bytes]) -> list[list[float]]:
        """CLIP image embeddings of encoded images (JPEG bytes), one per image, in order; at most 32 per
        request, the peer's limit."""
        uris = [f"data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}" for data in jpegs]
        body = {"model": self.clip_model, "modality": "image", "input": uris}
        return _embeddings(self._post("/embeddings", body))

    def rerank(self, query: str, passages: Sequence[str]) -> list[float]:
        """The cross-encoder's raw score (logit) of each passage against ``query``, in passage order."""
        body = {
            "model": self.rerank_model,
            "query": query,
            "documents": list(passages),
            "raw_scores": True,
            "return_documents": False,
        }
        results = self._post("/rerank", body)["results"]
        scores = [0.0] * len(passages)
        for item in results:
            scores[item["index"]] = float(item["relevance_score"])
        return scores

    def close(self) -> None:
        """Close this thread's connection (other threads' close when their thread ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        full = self.prefix + path
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request("POST", full, body=payload, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except _STALE_CONNECTION:
                # The server closed an idle keep-alive connection: reconnect once, then give up.
                self.close()
                if attempt == 2:
                    raise
        text = raw.decode("utf-8", errors="replace")
        if response.status != 200:
            raise PeerError(full, response.status, text)
        try:
            parsed: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise PeerError(full, response.status, text) from exc
        return parsed


def _embeddings(response: dict[str, Any]) -> list[list[float]]:
    return [item["embedding"] for item in sorted(response["data"], key=lambda item: item["index"])]


def _sample_jpeg() -> bytes:
    from PIL import Image

    from demo.catalog import render_product_image

    image: Image.Image = render_product_image("boot", (150, 40, 30), "solid", seed=0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:7997", help="the peer's base URL")
    parser.add_argument("--clip-model", default=CLIP_MODEL, help="served name of the CLIP checkpoint")
    parser.add_argument("--rerank-model", default=RERANK_MODEL, help="served name of the cross-encoder")
    parser.add_argument("--depth", type=int, default=50, help="passages per re-rank request")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of each kind, after one warm-up")
    args = parser.parse_args(argv)

    from vitrine.measure import percentile

    client = PeerClient(args.url, clip_model=args.clip_model, rerank_model=args.rerank_model)
    jpeg = _sample_jpeg()
    passages = [
        f"Red leather ankle boot number {i}, hand-stitched, with a low heel." for i in range(args.depth)
    ]
    calls: dict[str, Callable[[], Any]] = {
        "text": lambda: client.embed_texts(["red leather ankle boots"]),
        "image": lambda: client.embed_images([jpeg]),
        f"rerank ({args.depth} passages)": lambda: client.rerank("red leather ankle boots", passages),
    }
    for name, call in calls.items():
        result = call()
        width = len(result[0]) if name in ("text", "image") else len(result)
        timings = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            call()
            timings.append((time.perf_counter() - start) * 1000)
        print(
            f"{name:<22} {width:>4} values  p50 {percentile(timings, 0.5):8.1f} ms  "
            f"min {min(timings):8.1f} ms  max {max(timings):8.1f} ms  ({args.repeat} calls)"
        )
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
