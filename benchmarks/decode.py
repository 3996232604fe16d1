"""``python -m benchmarks.decode``: image pre-processing per photo, full JPEG decode vs draft decode, and
what the draft does to the served embedding.

The seeded demo catalog's 640x640 product JPEGs (``--size`` to change) go through the serving
pre-processor's own functions (``model_repository.preprocess.open_image`` -> ``vitrine.pixels``) with
and without ``draft_size``, interleaved over ``--rounds`` rounds, one thread, as the Python-backend
model runs them; then the exported image tower embeds both pixel sets and the cosine between them is
reported (random weights measure pixel sensitivity, not quality).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from demo.catalog import generate_catalog, render_product_image
from model_repository.preprocess import normalize, open_image, resize_and_crop
from model_repository.runtime import make_session
from vitrine.contracts import CLIP_IMAGE_SIZE
from vitrine.measure import describe_hardware, percentile
from vitrine.tables import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=640, help="side of the generated product photos")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    photos = []
    for _, spec in list(generate_catalog(args.images, seed=0, image_size=args.size)):
        buf = io.BytesIO()
        render_product_image(*spec).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    modes = {"full decode": 0, "draft decode": CLIP_IMAGE_SIZE}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, draft in modes.items():
            for data in photos:
                t0 = time.perf_counter()
                resize_and_crop(open_image(data, draft))
                times[mode].append(1000 * (time.perf_counter() - t0))

    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    session = make_session(args.artifacts / "clip_image_encoder" / "model.onnx")
    name = session.get_inputs()[0].name
    embedded = {
        mode: session.run(
            None, {name: normalize(np.stack([resize_and_crop(open_image(d, draft)) for d in photos]))}
        )[0]
        for mode, draft in modes.items()
    }
    a, b = embedded["full decode"], embedded["draft decode"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    base = percentile(times["full decode"], 0.5)
    rows = [
        [mode, f"{percentile(t, 0.5):.2f}", f"{percentile(t, 0.95):.2f}", f"{1000 / percentile(t, 0.5):.0f}",
         f"{base / percentile(t, 0.5):.2f}x"]
        for mode, t in times.items()
    ]  # fmt: skip
    weights = manifest["models"]["clip_image_encoder"].get("weights", "?")
    lines = [
        f"Hardware: {describe_hardware()}; {len(photos)} demo JPEGs {args.size}x{args.size} (quality 90), "
        f"{args.rounds} interleaved rounds, one thread; decode + resize + crop per photo.",
        "",
        *markdown_table(
            ["pre-processing", "p50 ms", "p95 ms", "photos/s per core", "vs full"], rows, "lrrrr"
        ),
        "",
        f"Image tower ({manifest.get('size', '?')} size, {weights} weights) on draft vs full pixels: "
        f"cosine min {cosine.min():.6f}, mean {cosine.mean():.6f}.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
