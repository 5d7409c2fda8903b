"""Every RPC of weft-api and weft-executor's ExecutorService, driven by hypothesis with
random well-formed and malformed requests against real servers on real etcd.

For each call: the server answers (no crash, it keeps serving), never INTERNAL or
UNKNOWN, a refused call leaves the etcd keyspace exactly as it was (no partial write),
and an INVALID_ARGUMENT names the field it is about. Two api servers are driven: one
without auth, one with auth on (calls carry a cluster-wide admin token, so they pass the
role checks and reach validation through the auth interceptor's own request parsing).

The suite runs a fixed, derandomized budget (`WEFT_FUZZ_EXAMPLES`, default 10 per RPC and
server, a few seconds); `./dev fuzz` runs a long random one.
"""

from __future__ import annotations

import os
import re
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import Servers
from tests.fuzz.strategies import NAMESPACE, RUN_ID, raw_request, seeds
from tests.integration.auth.test_auth import contract_methods, path_of
from weft.v1 import run_pb2

EXAMPLES = int(os.environ.get("WEFT_FUZZ_EXAMPLES", "10"))
#: The suite replays the same examples every time; `./dev fuzz` explores.
LONG_RUN = "WEFT_FUZZ_EXAMPLES" in os.environ
pytestmark = pytest.mark.timeout(max(300, EXAMPLES * 2))

#: Statuses that mean the server failed, not the request.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
#: An INVALID_ARGUMENT message starts with the field it is about: `name: ...`,
#: `run.parameters["x"]: ...`, `parent (namespace): ...`, `pipeline.spec.steps[2].name: ...`.
FIELD_FIRST = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*|\[[^\]]*\])*( \([a-z ]+\))?: ", re.DOTALL)


def call(
    channel: grpc.Channel, method: MethodDescriptor, payload: list[bytes], metadata: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    """One call with raw request bytes; a response stream is read up to its first message."""
    path = path_of(method)
    raw: Any = channel  # raw bytes in and out: no (de)serializers, which the stubs insist on
    options = {"timeout": 10, "metadata": metadata or None}
    try:
        if method.client_streaming:
            raw.stream_unary(path)(iter(payload), **options)
        elif method.server_streaming:
            # A watch from a future revision rightly waits: give streams less time.
            responses = raw.unary_stream(path)(payload[0], **{**options, "timeout": 2})
            for _ in responses:
                responses.cancel()  # the server answered; a live watch would go on for ever
                break
        else:
            raw.unary_unary(path)(payload[0], **options)
    except grpc.RpcError as error:
        failed: Any = error
        if failed.code() == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""
        return failed.code(), failed.details() or ""
    return grpc.StatusCode.OK, ""


class Payload(list[bytes]):
    """The request messages of one call, shown shortened (a failing example may be MiBs)."""

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(m[:200]) + (f"...({len(m)} bytes)" if len(m) > 200 else "") for m in self) + "]"


def payloads(method: MethodDescriptor) -> st.SearchStrategy[Payload]:
    return _payloads(method).map(Payload)


def _payloads(method: MethodDescriptor) -> st.SearchStrategy[list[bytes]]:
    valid = seeds(method.name)
    if method.client_streaming:
        header, data = valid
        return st.one_of(
            st.lists(raw_request(method.input_type, valid), min_size=0, max_size=4),
            st.tuples(raw_request(method.input_type, [header]), raw_request(method.input_type, [data])).map(list),
        )
    return raw_request(method.input_type, valid).map(lambda data: [data])


def _served_by(target: str) -> list[MethodDescriptor]:
    return contract_methods("executor" if target == "executor" else "api")


CASES = [(target, method) for target in ("api", "api-auth", "executor") for method in _served_by(target)]


@pytest.mark.parametrize(("target", "method"), CASES, ids=[f"{t}:{m.name}" for t, m in CASES])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_every_rpc_survives_hostile_requests(
    servers: Servers, target: str, method: MethodDescriptor, data: st.DataObject
) -> None:
    server = servers.targets[target]
    payload = data.draw(payloads(method), label="request")
    before = servers.snapshot(server.keyspace)
    metadata = [("authorization", f"Bearer {server.token}")] if server.token else []
    channel = servers.channel(target)
    code, details = call(channel, method, payload, metadata)
    # Still serving: the health check answers after whatever that was.
    health: Any = channel
    assert health.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5) == b"\x08\x01"
    assert code not in SERVER_FAULTS, f"{path_of(method)} answered {code.name}: {details}"
    if code != grpc.StatusCode.OK:
        after = servers.snapshot(server.keyspace)
        assert after == before, f"{path_of(method)} failed ({code.name}: {details}) but changed etcd"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert FIELD_FIRST.match(details), f"{path_of(method)}: the rejection names no field: {details!r}"


def test_the_fuzzer_reaches_deep_validation(servers: Servers) -> None:
    # A guard on the strategies: well-formed names must find the seeded records, or the
    # fuzzer would only ever test the first check of each method.
    with grpc.insecure_channel(servers.targets["api"].address) as channel:
        raw: Any = channel
        answer = raw.unary_unary("/weft.v1.RunService/GetRun")(
            run_pb2.GetRunRequest(name=f"namespaces/{NAMESPACE}/runs/{RUN_ID}").SerializeToString(), timeout=5
        )
    run = run_pb2.Run.FromString(answer)
    assert run.pipeline == f"namespaces/{NAMESPACE}/pipelines/seeded"
