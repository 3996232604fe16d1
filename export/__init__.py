"""Checkpoints to validated ONNX serving artifacts: CLIP text and image towers and the cross-encoder.

``python -m export --help`` runs it; ``export.pipeline.export_all`` is the Python entry point and
``export.reference.TorchReference`` the PyTorch reference served outputs are compared with.
"""
