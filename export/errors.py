"""Typed export failures, so callers and tests can tell a broken graph from a bad checkpoint."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export could not produce a trustworthy artifact."""


class SourceError(ExportError):
    """The checkpoint could not be obtained or is not the expected architecture."""


class ShapeError(ExportError):
    """A graph's inputs/outputs do not have the names, types or shapes the serving contract fixes."""


class ToleranceError(ExportError):
    """A graph's outputs differ from PyTorch beyond tolerance; the message carries the figures."""
