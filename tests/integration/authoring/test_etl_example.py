"""examples/etl_functions.py produces, byte for byte, the outputs of examples/etl/pipeline.yaml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import weft
from tests.integration.executor.support import Harness
from weft.v1 import pipeline_pb2, run_pb2

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
#: (step, output) of both pipelines: the same names, the same bytes.
OUTPUTS = [
    ("generate", "orders"),
    ("transform-0", "stats"),
    ("transform-1", "stats"),
    ("transform-2", "stats"),
    ("aggregate", "summary"),
    ("report", "report"),
]


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("etl_functions", EXAMPLES / "etl_functions.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run_of(h: Harness, pipeline: weft.Pipeline, rows: str) -> run_pb2.Run:
    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline.to_proto())
    created = await h.clients.pipelines.CreatePipeline(request)
    run = await h.wait((await h.run(created.name, {"rows": rows}, version=created.version)).name, timeout=120)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    return run


async def test_the_python_etl_matches_the_yaml_etl_byte_for_byte(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    from_yaml = await run_of(h, weft.load_pipeline(EXAMPLES / "etl" / "pipeline.yaml"), "600")
    from_python = await run_of(h, example_module().build(), "600")

    for step, output in OUTPUTS:
        expected = await h.output(from_yaml, step, output)
        assert await h.output(from_python, step, output) == expected, (step, output)
    report = (await h.output(from_python, "report", "report")).decode()
    assert report.startswith("Orders by region (600 generated)\n")
    # Different programs, so different DNA: nothing of one run was reused by the other.
    steps = {s.step: s for s in from_python.steps}
    assert {s.state for s in steps.values()} == {run_pb2.StepRun.STATE_SUCCEEDED}


def test_the_example_has_a_working_help() -> None:
    shown = subprocess.run(
        [sys.executable, str(EXAMPLES / "etl_functions.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--rows" in shown.stdout
    assert "--target" in shown.stdout
