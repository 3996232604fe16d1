"""Export the CLIP text and image towers, the cross-encoder and the MiniLM sentence encoder to ONNX,
validate each against PyTorch on fresh inputs, and describe the artifacts (weights, source, checksums,
figures) in manifest.json."""

from __future__ import annotations

import argparse
import json
import sys

from export.errors import ExportError
from export.pipeline import ExportConfig, export_all
from vitrine import config, logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    config.add_arguments(parser, ExportConfig, "VITRINE_EXPORT")
    parser.add_argument("--log-level", default="warning")
    ns = parser.parse_args(argv)
    logs.setup(ns.log_level)
    cfg = config.from_namespace(ExportConfig, ns)
    try:
        manifest = export_all(cfg)
    except ExportError as exc:
        print(f"export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    summary = {
        name: {
            "weights": e.weights,
            "source": e.source,
            "validation": {k: v for k, v in e.validation.items() if k != "ranking"},
            "int8": e.int8 and {k: e.int8[k] for k in ("agreement_top10", "servable")},
            "fp16": e.fp16 and e.fp16["status"],
            "tensorrt": e.tensorrt and e.tensorrt["status"],
        }
        for name, e in manifest.models.items()
    }
    print(json.dumps({"out": str(cfg.out), "durations_s": manifest.durations_s, "models": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
