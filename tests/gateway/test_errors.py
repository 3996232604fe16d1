"""The two translation points: dependency exceptions -> typed errors -> gRPC statuses."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from gateway.errors import (
    DeadlineExceeded,
    Dependency,
    DependencyError,
    InvalidInput,
    Overloaded,
    Unavailable,
    from_dependency,
    status_of,
)


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.INVALID_ARGUMENT", InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        ("StatusCode.RESOURCE_EXHAUSTED", Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("StatusCode.NOT_FOUND", Unavailable, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.INTERNAL", DependencyError, grpc.StatusCode.INTERNAL),
    ],
)
def test_triton_statuses(status: str, expected: type, code: grpc.StatusCode) -> None:
    err = from_dependency(Dependency.TRITON, InferenceServerException("boom", status=status))
    assert type(err) is expected
    got_code, message = status_of(err)
    assert got_code == code
    if code != grpc.StatusCode.DEADLINE_EXCEEDED:
        assert "triton" in message


def test_triton_queue_full_is_overload_not_outage() -> None:
    # Triton's dynamic batcher answers a full queue with UNAVAILABLE; the stack is busy, not down.
    exc = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    code, message = status_of(from_dependency(Dependency.TRITON, exc))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "triton is overloaded" in message


def test_a_python_model_whose_stub_is_down_is_unavailable_not_internal() -> None:
    # Triton answers INTERNAL while a Python model's stub restarts: the server cannot serve it now.
    detail = "in ensemble 'embed_text', Stub process 'clip_text_tokenize_0_1' is not healthy."
    exc = InferenceServerException(detail, status="StatusCode.INTERNAL")
    code, message = status_of(from_dependency(Dependency.TRITON, exc))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "triton" in message and "not healthy" in message


def test_index_rpc_error_names_the_index() -> None:
    class FakeRpcError(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    err = from_dependency(Dependency.INDEX, FakeRpcError())
    assert status_of(err) == (grpc.StatusCode.UNAVAILABLE, "index: unavailable (connection refused)")


def test_unexpected_errors_do_not_leak_details() -> None:
    assert status_of(RuntimeError("secret path")) == (
        grpc.StatusCode.INTERNAL,
        "internal error: RuntimeError",
    )
    assert status_of(TimeoutError())[0] == grpc.StatusCode.DEADLINE_EXCEEDED
