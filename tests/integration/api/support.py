"""Helpers of the api tests: spec builders, stubs, keyspace snapshots, executor-side writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from weft.v1 import artifact_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc
from weft_core.keyspace import Keyspace, ready_mark
from weft_core.runs import run_summary
from weft_core.spec import parse_run_name
from weft_core.store import Store, op_put

Run = run_pb2.Run
StepRun = run_pb2.StepRun


@dataclass
class Clients:
    """Stubs of the three api services on one channel."""

    pipelines: Any
    runs: Any
    artifacts: Any

    @classmethod
    def of(cls, channel: grpc.aio.Channel) -> Clients:
        # The generated stubs are untyped: calls through them return Any.
        return cls(
            pipeline_pb2_grpc.PipelineServiceStub(channel),  # type: ignore[no-untyped-call]
            run_pb2_grpc.RunServiceStub(channel),  # type: ignore[no-untyped-call]
            artifact_pb2_grpc.ArtifactServiceStub(channel),  # type: ignore[no-untyped-call]
        )


def step(
    name: str,
    *,
    reads: tuple[str, ...] = (),
    depends_on: tuple[str, ...] = (),
    parameters: tuple[str, ...] = (),
    command: tuple[str, ...] = ("true",),
) -> pipeline_pb2.Step:
    """A step that reads output `out` of each step in `reads` and writes its own `out`."""
    built = pipeline_pb2.Step(
        name=name,
        container=pipeline_pb2.Container(image="busybox:1.36", command=list(command)),
        outputs=[pipeline_pb2.Output(name="out")],
        depends_on=list(depends_on),
    )
    for i, upstream in enumerate(reads):
        built.inputs.add(name=f"in{i}", step_output=pipeline_pb2.OutputRef(step=upstream, output="out"))
    for parameter in parameters:
        built.inputs.add(name=f"p-{parameter}", parameter=parameter)
    return built


def diamond(command: str = "true") -> pipeline_pb2.PipelineSpec:
    """generate → (left, right) → join, with a parameter `size` (default "10") and a required `label`."""
    return pipeline_pb2.PipelineSpec(
        parameters=[
            pipeline_pb2.Parameter(name="size", default_value="10"),
            pipeline_pb2.Parameter(name="label"),
        ],
        steps=[
            step("generate", parameters=("size",), command=(command,)),
            step("left", reads=("generate",)),
            step("right", reads=("generate",)),
            step("join", reads=("left", "right"), parameters=("label",)),
        ],
    )


def simple(n: int = 1) -> pipeline_pb2.PipelineSpec:
    """A chain of `n` steps without parameters."""
    steps = [step("s0")] + [step(f"s{i}", reads=(f"s{i - 1}",)) for i in range(1, n)]
    return pipeline_pb2.PipelineSpec(steps=steps)


async def create_pipeline(
    clients: Clients, name: str, spec: pipeline_pb2.PipelineSpec, **fields: Any
) -> pipeline_pb2.Pipeline:
    created: pipeline_pb2.Pipeline = await clients.pipelines.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name=name, spec=spec, **fields))
    )
    return created


async def create_run(clients: Clients, pipeline: str, **parameters: str) -> run_pb2.Run:
    created: run_pb2.Run = await clients.runs.CreateRun(
        run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline=pipeline, parameters=parameters))
    )
    return created


async def keyspace_snapshot(store: Store, keyspace: Keyspace) -> dict[bytes, tuple[bytes, int]]:
    """Every key under the keyspace root with its value and mod revision."""
    result = await store.range_all(keyspace.root.encode() + b"/")
    return {kv.key: (kv.value, kv.mod_revision) for kv in result.kvs}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class ExecutorWrites:
    """Writes records exactly as an executor does (same keys, same encodings), so the api's
    reads and watches can be tested before a real executor exists in the test."""

    def __init__(self, store: Store, keyspace: Keyspace, run: str) -> None:
        self.store = store
        self.keyspace = keyspace
        self.ns, self.run = parse_run_name(run)

    async def run_record(self) -> tuple[run_pb2.Run, int]:
        kv = await self.store.get(self.keyspace.run(self.ns, self.run))
        assert kv is not None
        record = run_pb2.Run()
        record.ParseFromString(kv.value)
        return record, kv.mod_revision

    async def set_run_state(self, state: Any, **fields: Any) -> int:
        record, _ = await self.run_record()
        record.state = state
        for name, value in fields.items():
            setattr(record, name, value)
        data = record.SerializeToString()
        result = await self.store.txn(
            [],
            [
                op_put(self.keyspace.run(self.ns, self.run), data),
                op_put(self.keyspace.run_index(self.ns, self.run), run_summary(record).SerializeToString()),
            ],
        )
        return result.revision

    async def mark_ready(self, *steps: str) -> None:
        await self.store.create_many_if_absent(
            [(self.keyspace.ready(self.ns, self.run, s), ready_mark()) for s in steps]
        )

    async def step_record(self, step: str, state: Any, **fields: Any) -> int:
        record = StepRun(step=step, state=state, **fields)
        return await self.store.put(self.keyspace.step(self.ns, self.run, step), record.SerializeToString())

    async def done_record(self, step: str, state: Any, **fields: Any) -> int:
        record = StepRun(step=step, state=state, **fields)
        return await self.store.put(self.keyspace.done(self.ns, self.run, step), record.SerializeToString())
