"""What the fuzzer found, each pinned by the smallest request that showed it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.fuzz.conftest import Servers
from weft.v1 import artifact_pb2, executor_pb2
from weft_core.blobs import digest_of


def refusal(servers: Servers, target: str, path: str, messages: list[bytes], kind: str) -> Any:
    """The error of a call of `kind` (unary, client-stream, server-stream) with raw bytes."""
    channel: Any = servers.channel(target)
    token = servers.targets[target].token
    options = {"timeout": 10, "metadata": [("authorization", f"Bearer {token}")] if token else None}
    calls: dict[str, Callable[[], Any]] = {
        "client-stream": lambda: channel.stream_unary(path)(iter(messages), **options),
        "server-stream": lambda: list(channel.unary_stream(path)(messages[0], **options)),
        "unary": lambda: channel.unary_unary(path)(messages[0], **options),
    }
    with pytest.raises(grpc.RpcError) as refused:
        calls[kind]()
    return refused.value


@pytest.mark.parametrize("target", ["api", "api-auth"])
def test_request_bytes_that_do_not_parse_are_invalid_argument_not_internal(servers: Servers, target: str) -> None:
    # Found: b"\x00" as a GetRun request (and as a PutBlob message) was INTERNAL "DecodeError".
    for path, kind in (("/weft.v1.RunService/GetRun", "unary"), ("/weft.v1.ArtifactService/PutBlob", "client-stream")):
        error = refusal(servers, target, path, [b"\x00"], kind)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error.details())
        assert error.details().startswith("request: the bytes are not a valid message"), error.details()


def test_a_put_blob_longer_than_its_header_names_the_header_field(servers: Servers) -> None:
    # Found: "the upload sent more than the 14 bytes its header declared" named no field.
    header = artifact_pb2.BlobHeader(digest=digest_of(b"x" * 14), size_bytes=14, namespace="fuzz")
    messages = [
        artifact_pb2.PutBlobRequest(header=header).SerializeToString(),
        artifact_pb2.PutBlobRequest(data=b"x" * 15).SerializeToString(),
    ]
    error = refusal(servers, "api", "/weft.v1.ArtifactService/PutBlob", messages, "client-stream")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("header.size_bytes: "), error.details()


def test_read_attempt_logs_without_a_step_names_the_step_field(servers: Servers) -> None:
    # Found: "run and step are required" named neither.
    request = executor_pb2.ReadAttemptLogsRequest(run="namespaces/fuzz/runs/r").SerializeToString()
    error = refusal(servers, "executor", "/weft.v1.ExecutorService/ReadAttemptLogs", [request], "server-stream")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("step: required"), error.details()
