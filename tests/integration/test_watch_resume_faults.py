"""`watch_run` resumes without a gap or a duplicate when a stream breaks in the middle of a
revision. A real weft-api cannot be made to break there on demand, so a gRPC server whose
WatchRun injects that fault stands in for it here; tests/integration/api/test_watch.py and
tests/e2e/test_cli.py cover resumption against the real api."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from weft import AsyncClient
from weft.v1 import run_pb2, run_pb2_grpc

Run = run_pb2.Run
StepRun = run_pb2.StepRun


def step_event(revision: int, name: str, last: bool) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        revision=revision, step=StepRun(step=name, state=StepRun.STATE_SKIPPED), last_in_revision=last
    )


class BreaksMidRevision(run_pb2_grpc.RunServiceServicer):
    """Sends a snapshot (revision 4), then revision 5 = [a, b, c]; the first stream dies after b."""

    def __init__(self) -> None:
        self.start_revisions: list[int] = []

    async def WatchRun(self, request: run_pb2.WatchRunRequest, context: Any) -> AsyncIterator[run_pb2.RunEvent]:
        self.start_revisions.append(request.start_revision)
        if request.start_revision == 0:
            yield run_pb2.RunEvent(revision=4, run=Run(name=request.name, state=Run.STATE_RUNNING), snapshot=True,
                                   last_in_revision=True)  # fmt: skip
        yield step_event(5, "a", False)
        yield step_event(5, "b", False)
        if len(self.start_revisions) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: stream broken mid-revision")
        yield step_event(5, "c", True)
        yield run_pb2.RunEvent(revision=6, run=Run(name=request.name, state=Run.STATE_FAILED), last_in_revision=True)


async def test_a_revision_received_in_part_is_neither_lost_nor_repeated() -> None:
    server = grpc.aio.server()
    servicer = BreaksMidRevision()
    run_pb2_grpc.add_RunServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = await AsyncClient.connect(f"127.0.0.1:{port}")
        try:
            seen = []
            async for event in client.watch_run("namespaces/default/runs/r"):
                pb = event.pb
                seen.append(pb.step.step if pb.HasField("step") else Run.State.Name(pb.run.state))
        finally:
            await client.close()
    finally:
        await server.stop(None)
    assert seen == ["STATE_RUNNING", "a", "b", "c", "STATE_FAILED"]
    # It resumed from the last revision received whole (the snapshot's), not from b's.
    assert servicer.start_revisions == [0, 5]
