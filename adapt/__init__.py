"""Domain adaptation: adapter heads trained on cached CLIP features, a re-ranking head, fine-tuning.

Training reads like export: a frozen spec, a seeded run, a manifest of data, parameters and metrics,
and a validation of the exported graph against PyTorch. Features come from the same ONNX graphs Triton
serves and images pass through the same pixel transform (``vitrine.pixels``), so what is trained here is
what is served. This package imports the kernel and ``demo`` only.
"""
