"""The CPU encoder's batching arithmetic, run against a real onnxruntime session (no Triton)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_repository.runtime import available_cores, make_session, run_batched


@pytest.fixture(scope="module")
def doubling_session(tmp_path_factory):
    """y[b, s] = 2 * x[b, s] + m[b, s]: output rows must line up with their own request's inputs."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["twice"]),
            helper.make_node("Add", ["twice", "m"], ["y"]),
        ],
        "doubling",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s"]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "doubling.onnx"
    onnx.save(model, str(path))
    return make_session(path, threads=1)


def _feed(rows: int, width: int, start: float) -> dict[str, np.ndarray]:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + start
    return {"x": x, "m": np.ones_like(x)}


def test_equal_shapes_share_one_run_and_split_back_per_request(doubling_session):
    feeds = [_feed(1, 4, 0), _feed(3, 4, 100), _feed(2, 4, 1000)]
    results = run_batched(doubling_session, feeds, ["y"])
    for feed, result in zip(feeds, results, strict=True):
        assert result.error is None and result.outputs is not None
        np.testing.assert_array_equal(result.outputs["y"], 2 * feed["x"] + 1)


def test_different_shapes_run_in_separate_groups(doubling_session):
    feeds = [_feed(1, 8, 0), _feed(2, 16, 5), _feed(1, 8, 9)]
    results = run_batched(doubling_session, feeds, ["y"])
    assert [r.outputs["y"].shape for r in results if r.outputs] == [(1, 8), (2, 16), (1, 8)]
    np.testing.assert_array_equal(results[2].outputs["y"], 2 * feeds[2]["x"] + 1)  # type: ignore[index]


def test_a_bad_request_fails_alone(doubling_session):
    good = _feed(2, 4, 0)
    mismatched = {"x": np.zeros((3, 4), np.float32), "m": np.zeros((2, 4), np.float32)}
    wrong_dtype = {"x": np.zeros((1, 6), np.float64), "m": np.zeros((1, 6), np.float64)}
    results = run_batched(doubling_session, [mismatched, good, wrong_dtype], ["y"])
    assert results[0].error == "inputs disagree on the batch size: x 3, m 2"
    assert results[1].outputs is not None
    np.testing.assert_array_equal(results[1].outputs["y"], 2 * good["x"] + 1)
    assert results[2].error is not None and "could not run this input" in results[2].error


def test_sessions_are_sized_to_the_cores_and_do_not_spin(doubling_session):
    assert available_cores() >= 1
    options = doubling_session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
