"""`@weft.function` steps on the Kubernetes runtime: the same outputs as on the local runtime.

A real kube-apiserver and the simulated kubelet that runs step pods for real
(tests/integration/kube/conftest.py): the step container runs `python3 -c BOOTSTRAP` on
this machine, exactly the command a real pod would run in its image.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import weft
from tests.integration.authoring import functions_module as fm
from tests.integration.executor.support import Harness, states, steps_by_name
from tests.integration.kube.conftest import (  # noqa: F401  (fixtures used by name)
    cluster,
    core,
    kube_executor_settings,
    kubelet,
    namespace,
    pods_root,
)
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.v1 import pipeline_pb2, run_pb2

pytestmark = pytest.mark.kube


async def run_to_end(h: Harness, pipeline: weft.Pipeline) -> run_pb2.Run:
    created = await h.clients.pipelines.CreatePipeline(pipeline_pb2.CreatePipelineRequest(pipeline=pipeline.to_proto()))
    return await h.wait((await h.run(created.name, version=created.version)).name, timeout=120)


async def test_function_steps_round_trip_their_types_and_report_exceptions_in_pods(
    harness: Harness,
    cluster: KubeCluster,  # noqa: F811
    kubelet: SimulatedKubelet,  # noqa: F811
    core: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    h = harness
    await h.start_executor(**kube_executor_settings(cluster, namespace, max_parallel=8))
    with weft.Pipeline("types") as p:
        parts = fm.produce(count=3, ratio=0.25, enabled=False, missing=None)
        summary = fm.consume(
            head=parts.head, tail=parts.tail, data=fm.blob(size=2), tree=fm.tree(files=1), file=fm.one_file(text="k"),
            nothing=None,
        )  # fmt: skip
        fm.total_of(parts=[summary.total, 0.5])

    run = await run_to_end(h, p)

    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    assert set(states(run).values()) == {"SUCCEEDED"}
    assert await h.output(run, "produce", "head") == b"c=3 r=0.25 e=False m=None"
    flags = json.loads(await h.output(run, "consume", "flags"))
    assert flags == {"head": "c=3 r=0.25 e=False m=None", "files": ["sub/0.txt"], "file": "k", "nothing": None,
                     "data": [0, 1]}  # fmt: skip
    assert json.loads(await h.output(run, "total-of", "result")) == 5.5

    with weft.Pipeline("raises") as failing:
        fm.fails(depth=1)
    failed_run = await run_to_end(h, failing)

    assert failed_run.state == run_pb2.Run.STATE_FAILED
    message = steps_by_name(failed_run)["fails"].message
    assert "ValueError: no data for shard 1" in message
    assert "in dive" in message
    # The run's message says it too, from the pod's log (stdout and stderr interleaved).
    first, *frames = failed_run.message.splitlines()
    assert first == "step fails failed: exit code 1: ValueError: no data for shard 1"
    assert any(line.strip().endswith("in dive") for line in frames)
    assert frames[-1] == "ValueError: no data for shard 1"
