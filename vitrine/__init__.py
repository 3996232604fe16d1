"""Vitrine: multimodal product search served by Triton, FAISS and gRPC."""

__version__ = "0.1.0"
