"""Helpers of the executor tests: pipelines of shell steps, runs over gRPC, launch counting.

Every step built here first appends `<step> <attempt>` to a launch file (its path is in
the step's env, so it is part of the DNA but the same for every run of a test), so a
test counts the processes that really started: a cached step appends nothing.
Executors run either in-process (`Executor`) or as real `weft-executor` subprocesses
(`ExecutorProcess`) that a test can SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from tests.integration.api.support import Clients
from tests.support import assert_eventually_async
from weft.localstack import ChildProcess
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2
from weft_core.keyspace import Keyspace
from weft_core.spec import parse_run_name
from weft_core.store import Store
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor

Run = run_pb2.Run
StepRun = run_pb2.StepRun
TERMINAL = (Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED)

_LISTENING = re.compile(rb"weft-executor (\S+) listening on (\S+)")


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


async def until(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    """Polls a plain predicate without blocking the event loop (in-process executors run in it)."""

    async def check() -> Any:
        return predicate()

    return await assert_eventually_async(check, timeout=timeout, what=what)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def state_name(state: int, enum: Any = StepRun.State) -> str:
    return str(enum.Name(state)).removeprefix("STATE_")


def executor_command() -> str:
    beside = Path(sys.executable).parent / "weft-executor"
    if beside.exists():
        return str(beside)
    found = shutil.which("weft-executor")
    if not found:
        raise FileNotFoundError("the weft-executor console script is not installed (pip install -e services/executor)")
    return found


class ExecutorProcess:
    """The `weft-executor` console script as a child process a test may SIGKILL."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.child = ChildProcess(argv, log_path, env={**os.environ, **(env or {})})
        self.log_path = log_path
        self.executor_id = ""
        self.address = ""

    def start(self, timeout: float = 20.0) -> None:
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                match = _LISTENING.search(self.log_path.read_bytes())
                if match:
                    self.executor_id, self.address = match.group(1).decode(), match.group(2).decode()
                    return
            if not self.child.alive():
                raise RuntimeError(f"weft-executor exited at start:\n{self.child.tail(40)}")
            time.sleep(0.05)
        self.child.stop()
        raise TimeoutError(f"weft-executor did not start within {timeout}s:\n{self.child.tail(40)}")

    def kill(self) -> None:
        self.child.kill()

    def stop(self) -> None:
        self.child.stop()

    def tail(self, lines: int = 60) -> str:
        return self.child.tail(lines)


@dataclass
class Harness:
    """An api, executors and helpers to define and run pipelines against them."""

    etcd_endpoint: str
    api_address: str
    keyspace: Keyspace
    blob_dir: Path
    tmp: Path
    channel: grpc.aio.Channel
    store: Store
    executors: list[Executor] = field(default_factory=list)
    processes: list[ExecutorProcess] = field(default_factory=list)

    @property
    def clients(self) -> Clients:
        return Clients.of(self.channel)

    @property
    def launch_file(self) -> Path:
        return self.tmp / "launches.txt"

    # Executors ------------------------------------------------------------------------

    def executor_config(self, **overrides: Any) -> ExecutorConfig:
        index = len(self.executors) + len(self.processes)
        settings: dict[str, Any] = {
            "etcd_endpoints": self.etcd_endpoint,
            "api": self.api_address,
            "work_dir": self.tmp / f"work-{index}",
            "etcd_root": self.keyspace.root,
            "executor_id": f"exec-{index}",
            "max_parallel": 4,
            "lease_ttl": 10,
            "kill_grace": 1.0,
            # The steps built here write to the test's private tmp dir (the launch file),
            # which a root executor's default step user (nobody) cannot reach; the
            # secrets and isolation tests run with the default.
            "step_user": "root" if os.geteuid() == 0 else "",
        }
        settings.update(overrides)
        return ExecutorConfig(**settings)

    async def start_executor(self, environ: Mapping[str, str] | None = None, **overrides: Any) -> Executor:
        executor = Executor(self.executor_config(**overrides), environ=environ)
        await executor.start()
        self.executors.append(executor)
        return executor

    def start_process(self, env: Mapping[str, str] | None = None, **overrides: Any) -> ExecutorProcess:
        config = self.executor_config(**overrides)
        argv = [
            executor_command(),
            "--etcd-endpoints", config.etcd_endpoints,
            "--api", config.api,
            "--runtime", "local",
            "--max-parallel", str(config.max_parallel),
            "--work-dir", str(config.work_dir),
            "--listen", "127.0.0.1:0",
            "--etcd-root", config.etcd_root,
            "--executor-id", config.executor_id,
            "--lease-ttl", str(config.lease_ttl),
            "--kill-grace", str(config.kill_grace),
            "--step-user", config.step_user,
        ]  # fmt: skip
        process = ExecutorProcess(argv, self.tmp / f"{config.executor_id}.log", env)
        process.start()
        self.processes.append(process)
        return process

    async def close(self) -> None:
        for executor in self.executors:
            await executor.stop()
        for process in self.processes:
            process.stop()

    # Pipelines ------------------------------------------------------------------------

    def step(
        self,
        name: str,
        script: str = "",
        *,
        reads: Mapping[str, tuple[str, str]] | None = None,
        parameters: Mapping[str, str] | None = None,
        literals: Mapping[str, str] | None = None,
        outputs: Sequence[str] = ("out",),
        depends_on: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, tuple[str, str]] | None = None,
        retry: pipeline_pb2.RetryPolicy | None = None,
        timeout: float | None = None,
        cache: pipeline_pb2.CachePolicy | None = None,
        command: Sequence[str] | None = None,
        working_dir: str = "",
    ) -> pipeline_pb2.Step:
        """A shell step that records its launch, then runs `script`.

        Without `script`, it writes `<name>` into every declared output.
        """
        if not script:
            script = "".join(f'printf %s "{name}" > "$WEFT_OUTPUTS/{out}"; ' for out in outputs) or "true"
        container = pipeline_pb2.Container(
            image="busybox:1.36",
            command=list(command)
            if command
            else ["sh", "-c", f'echo "$WEFT_STEP $WEFT_ATTEMPT" >> "$LAUNCHES"; {script}'],
            working_dir=working_dir,
        )
        container.env.add(name="LAUNCHES", value=str(self.launch_file))
        for key, value in (env or {}).items():
            container.env.add(name=key, value=value)
        for key, (secret, secret_key) in (secrets or {}).items():
            container.env.add(name=key, secret=pipeline_pb2.SecretKeyRef(name=secret, key=secret_key))
        step = pipeline_pb2.Step(
            name=name,
            container=container,
            outputs=[pipeline_pb2.Output(name=o) for o in outputs],
            depends_on=list(depends_on),
        )
        for input_name, (upstream, output) in (reads or {}).items():
            step.inputs.add(name=input_name, step_output=pipeline_pb2.OutputRef(step=upstream, output=output))
        for input_name, parameter in (parameters or {}).items():
            step.inputs.add(name=input_name, parameter=parameter)
        for input_name, literal in (literals or {}).items():
            step.inputs.add(name=input_name, literal=literal)
        if retry is not None:
            step.retry.CopyFrom(retry)
        if timeout is not None:
            step.timeout.CopyFrom(duration(timeout))
        if cache is not None:
            step.cache.CopyFrom(cache)
        return step

    async def apply(
        self, name: str, steps: Sequence[pipeline_pb2.Step], parameters: Mapping[str, str | None] | None = None
    ) -> pipeline_pb2.Pipeline:
        spec = pipeline_pb2.PipelineSpec(steps=list(steps))
        for parameter, default in (parameters or {}).items():
            if default is None:
                spec.parameters.add(name=parameter)
            else:
                spec.parameters.add(name=parameter, default_value=default)
        request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name=name, spec=spec))
        created: pipeline_pb2.Pipeline = await self.clients.pipelines.CreatePipeline(request)
        return created

    async def run(
        self,
        pipeline: str,
        parameters: Mapping[str, str] | None = None,
        *,
        cache_mode: int = run_pb2.CACHE_MODE_USE,
        version: str = "",
    ) -> Run:
        run = Run(pipeline=pipeline, pipeline_version=version, parameters=dict(parameters or {}))
        run.options.cache_mode = cache_mode  # type: ignore[assignment]
        created: Run = await self.clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run))
        return created

    async def get(self, run: str) -> Run:
        found: Run = await self.clients.runs.GetRun(run_pb2.GetRunRequest(name=run, view=run_pb2.RUN_VIEW_FULL))
        return found

    async def wait(self, run: str, timeout: float = 60.0, states: Sequence[int] = TERMINAL) -> Run:
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = await self.get(run)
            except grpc.aio.AioRpcError as error:
                # The api answers UNAVAILABLE while its etcd is away (outage tests): keep asking.
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            if current.state in states:
                return current
            if time.monotonic() > deadline:
                steps = {s.step: state_name(s.state) for s in current.steps}
                raise AssertionError(
                    f"run {run} is {state_name(current.state, Run.State)} after {timeout}s; steps: {steps}"
                    + "".join(f"\n--- {p.executor_id}:\n{p.tail(30)}" for p in self.processes)
                )
            await asyncio.sleep(0.1)

    async def cancel(self, run: str, reason: str = "test") -> Run:
        cancelled: Run = await self.clients.runs.CancelRun(run_pb2.CancelRunRequest(name=run, reason=reason))
        return cancelled

    async def explain(self, run: str, step: str) -> run_pb2.StepExplanation:
        explanation: run_pb2.StepExplanation = await self.clients.runs.ExplainStep(
            run_pb2.ExplainStepRequest(run=run, step=step)
        )
        return explanation

    async def blob(self, digest: str) -> bytes:
        chunks = self.clients.artifacts.GetBlob(artifact_pb2.GetBlobRequest(digest=digest))
        return b"".join([chunk.data async for chunk in chunks])

    async def output(self, run: Run, step: str, output: str = "out") -> bytes:
        steps = {s.step: s for s in run.steps}
        return await self.blob(steps[step].outcome.outputs[output])

    def delete_blob(self, digest: str) -> None:
        hex_digest = digest.removeprefix("sha256:")
        (self.blob_dir / "sha256" / hex_digest[:2] / hex_digest).unlink()

    # Launch counting ------------------------------------------------------------------

    def launches(self) -> collections.Counter[str]:
        """How many processes each step started (from the launch file)."""
        if not self.launch_file.exists():
            return collections.Counter()
        return collections.Counter(line.split()[0] for line in self.launch_file.read_text().splitlines() if line)

    def clear_launches(self) -> None:
        self.launch_file.unlink(missing_ok=True)

    # Records --------------------------------------------------------------------------

    async def done_records(self, run: str) -> dict[str, tuple[StepRun, int]]:
        """Every done record of a run with its etcd version (1: written exactly once)."""
        ns, run_id = parse_run_name(run)
        prefix = self.keyspace.done_prefix(ns, run_id)
        listed = await self.store.range_all(prefix)
        records = {}
        for kv in listed.kvs:
            record = StepRun()
            record.ParseFromString(kv.value)
            records[self.keyspace.tail(kv.key, prefix)] = (record, kv.version)
        return records


def steps_by_name(run: Run) -> dict[str, StepRun]:
    return {s.step: s for s in run.steps}


def states(run: Run) -> dict[str, str]:
    return {s.step: state_name(s.state) for s in run.steps}
