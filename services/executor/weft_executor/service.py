"""ExecutorService: live logs of the attempts this executor is running.

weft-api proxies `ReadLogs` here while an attempt runs (it finds this executor's address
in its registration record); once the attempt ended its logs are blobs in the artifact
store and the api reads those instead. This service only reads: it never changes a
step, an attempt or etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from weft.v1 import executor_pb2, executor_pb2_grpc, run_pb2
from weft_core.auth import Role, Rule
from weft_core.errors import InvalidArgument, NotFound
from weft_core.spec import parse_run_name
from weft_executor.runtime import LaunchedAttempt, Runtime

#: Who may call ExecutorService (with auth on): weft-api proxies ReadLogs with its peer
#: token, which needs viewer in the run's namespace (a cluster-wide binding in practice).
EXECUTOR_RULES = {
    "/weft.v1.ExecutorService/ReadAttemptLogs": Rule(
        Role.VIEWER, lambda request: parse_run_name(request.run, "run")[0]
    ),
}

#: Live attempts by (run resource name, step, attempt number).
LiveAttempts = dict[tuple[str, str, int], tuple[Runtime, LaunchedAttempt]]


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    """Serves `weft.v1.ExecutorService` from the executor's table of live attempts."""

    def __init__(self, executor_id: str, live_attempts: LiveAttempts) -> None:
        self.executor_id = executor_id
        self.live_attempts = live_attempts

    def _find(self, run: str, step: str, number: int) -> tuple[int, Runtime, LaunchedAttempt]:
        if not run:
            raise InvalidArgument("run: required, e.g. namespaces/default/runs/r1", field="run")
        if not step:
            raise InvalidArgument("step: required, the name of a step of the run, e.g. train", field="step")
        if number < 0:
            # The same rule as weft-api's ReadLogs, so a direct caller gets the same answer.
            raise InvalidArgument("attempt: must be 0 (the latest) or an attempt number ≥ 1", field="attempt")
        if number > 0:
            found = self.live_attempts.get((run, step, number))
            if found is not None:
                return number, found[0], found[1]
        else:
            numbers = [n for (r, s, n) in self.live_attempts if r == run and s == step]
            if numbers:
                latest = max(numbers)
                runtime, attempt = self.live_attempts[(run, step, latest)]
                return latest, runtime, attempt
        # Say what is true: the attempt is NOT running here (it ended, never started here, or
        # another executor took it over).
        which = (
            f"attempt {number} of step {step} of {run} is not"
            if number > 0
            else f"no attempt of step {step} of {run} is"
        )
        raise NotFound(
            f"{which} running on executor {self.executor_id}; a finished attempt's logs are in the artifact store "
            "(read them through weft-api ReadLogs)"
        )

    async def ReadAttemptLogs(
        self, request: executor_pb2.ReadAttemptLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[run_pb2.LogChunk]:
        number, runtime, attempt = self._find(request.run, request.step, request.attempt)
        async for stream, data in runtime.read_logs(attempt, follow=request.follow):
            yield run_pb2.LogChunk(stream=stream, data=data, attempt=number)  # type: ignore[arg-type]
