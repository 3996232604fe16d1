"""The one Triton request builder: an ensemble's inputs and outputs exactly as its contract declares them.

The gateway (``tritonclient.grpc.aio``), the Locust users (sync ``tritonclient.grpc`` under gevent) and
the benchmarks all send requests built here; both clients take the same ``InferInput`` type. Whether a
request carries a leading batch axis and which wire dtype a tensor has come from
``vitrine.contracts``, the same declarations the model repository renders its configs from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput

from vitrine.contracts import EnsembleIO, Tensor

_NUMPY = {"BYTES": np.object_, "FP32": np.float32, "BOOL": np.bool_, "INT64": np.int64}


def _array(
    io: EnsembleIO, tensor: Tensor, values: Sequence[Any] | np.ndarray, rows: bool = False
) -> np.ndarray:
    spec = io.spec(tensor)
    if spec.dtype == "BYTES":
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
    else:
        array = np.asarray(values, dtype=_NUMPY[spec.dtype])
    if rows:
        return array.reshape(-1, *spec.dims)
    return array[None, ...] if io.batched else array


def inputs(
    io: EnsembleIO, values: Mapping[Tensor, Sequence[Any] | np.ndarray], rows: bool = False
) -> list[InferInput]:
    """One request's inputs: ``values`` per tensor for one request (str is sent as UTF-8). ``rows``: the
    values are several requests' worth, one row each, sent as one batch (a batched ensemble only)."""
    if rows and not io.batched:
        raise ValueError(f"{io.model.value} takes no batch axis")
    if set(values) != set(io.inputs):
        raise ValueError(
            f"{io.model.value} takes {[t.value for t in io.inputs]}, got {[t.value for t in values]}"
        )
    out = []
    for tensor in io.inputs:
        array = _array(io, tensor, values[tensor], rows)
        infer_input = InferInput(tensor.value, list(array.shape), io.spec(tensor).dtype)
        infer_input.set_data_from_numpy(array)
        out.append(infer_input)
    return out


def outputs(io: EnsembleIO) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(t.value) for t in io.outputs]


def output(io: EnsembleIO, result: Any, tensor: Tensor, rows: bool = False) -> np.ndarray | None:
    """One output of one request's result, without the batch axis (``rows``: with it, one row per item
    sent); None when the server sent none."""
    array = result.as_numpy(tensor.value)
    if array is None:
        return None
    return array[0] if io.batched and not rows else array
