"""The example ETL pipeline on the local runtime with the S3 backend: the executor reads and
writes the bucket directly (nothing through the api's ArtifactService), a second run is
fully CACHED, and `weft up --blob-store s3://…` runs it from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli import EXAMPLE, start_up, stop_up
from tests.integration.blobs.s3server import SECRET_ACCESS_KEY, S3Server
from tests.integration.executor.support import Harness, steps_by_name
from weft import load_pipeline
from weft.v1 import pipeline_pb2, run_pb2
from weft_api.artifacts import TRAFFIC
from weft_core import metrics
from weft_core.blobs import missing_blobs
from weft_core.objectstore import ObjectBlobStore

Run = run_pb2.Run
StepRun = run_pb2.StepRun
WEFT = str(Path(sys.executable).parent / "weft")


def _executor_bytes() -> tuple[float, float]:
    return tuple(  # type: ignore[return-value]
        float(metrics.BLOB_STORE_BYTES.labels(direction, "executor")._value.get()) for direction in ("in", "out")
    )


async def test_the_example_runs_on_the_local_runtime_with_its_data_in_s3(s3_harness: tuple[Harness, str]) -> None:
    h, url = s3_harness
    spec = load_pipeline(EXAMPLE).spec()
    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="etl", spec=spec))
    await h.clients.pipelines.CreatePipeline(request)
    executor = await h.start_executor(runtime="local", blob_store=url)
    through_api = (TRAFFIC.bytes_received, TRAFFIC.bytes_sent)
    direct = _executor_bytes()

    first = await h.wait((await h.run("etl", {"rows": "300", "seed": "5"})).name, timeout=90)

    assert first.state == Run.STATE_SUCCEEDED, first.message
    assert (TRAFFIC.bytes_received, TRAFFIC.bytes_sent) == through_api, "step data went through the api"
    # ...and what went around it is counted: weft_blob_store_bytes_total{mover="executor"}.
    written, read = (after - before for after, before in zip(_executor_bytes(), direct, strict=True))
    bucket = ObjectBlobStore.from_url(url)
    steps = steps_by_name(first)
    outputs = [digest for step in steps.values() for digest in step.outcome.outputs.values()]
    logs = [a.stdout_digest for step in steps.values() for a in step.attempts if a.stdout_digest]
    assert outputs
    assert await missing_blobs(bucket, outputs + logs) == []
    sizes = [(await bucket.stat(d)).size for d in set(outputs + logs)]  # type: ignore[union-attr]
    assert written >= sum(sizes)
    assert read > 0  # the downstream steps' inputs
    report = await bucket.get(steps["report"].outcome.outputs["report"])
    assert report.startswith(b"Orders by region (300 generated)")
    assert await h.output(first, "report", "report") == report  # ArtifactService reads the same bucket

    second = await h.wait((await h.run("etl", {"rows": "300", "seed": "5"})).name, timeout=90)
    assert second.state == Run.STATE_SUCCEEDED, second.message
    assert {s.step: s.state for s in second.steps} == {s: StepRun.STATE_CACHED for s in steps}
    assert executor.launches == len(spec.steps)


@pytest.mark.slow
def test_weft_up_with_blob_store_runs_the_example_from_the_cli(
    tmp_path: Path, s3_server: S3Server, s3_url: str
) -> None:
    up = start_up(tmp_path / "state", "--blob-store", s3_url, "--max-parallel", "4")
    try:
        env = {**os.environ, "WEFT_SERVER": up.api, "NO_COLOR": "1", "COLUMNS": "250"}

        def weft(*args: str) -> str:
            done = subprocess.run([WEFT, *args], capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 0, f"weft {' '.join(args)}: {done.stdout}\n{done.stderr}"
            return done.stdout

        assert s3_url in up.output.read_text()  # `weft up` says where the blobs are
        weft("apply", "-f", str(EXAMPLE))
        weft("run", "etl", "-p", "rows=200", "--run-id", "etl-on-s3", "--watch")
        run = json.loads(weft("runs", "get", "etl-on-s3", "-o", "json"))
        assert run["state"] == "STATE_SUCCEEDED", run
        assert not (tmp_path / "state" / "blobs").exists(), "blobs were written to the state dir"
        report = weft("outputs", "etl-on-s3", "report")
        assert "Orders by region (200 generated)" in report
    finally:
        stop_up(up)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log"))
    assert SECRET_ACCESS_KEY not in logs + up.output.read_text(), "a credential reached a log"
