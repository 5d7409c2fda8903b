"""`@weft.function` steps on a real executor (local runtime): types, failures, DNA, requirements.

Each test builds its pipeline with the SDK, creates it on a real weft-api over gRPC and
runs it on a real executor whose steps are real `python3` processes running the runner.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import weft
from tests.integration.authoring import functions_module as fm
from tests.integration.authoring import moved_module
from tests.integration.executor.support import Harness, states, steps_by_name
from weft.v1 import pipeline_pb2, run_pb2

SUCCEEDED = run_pb2.Run.STATE_SUCCEEDED


async def create(h: Harness, pipeline: weft.Pipeline) -> pipeline_pb2.Pipeline:
    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline.to_proto())
    created: pipeline_pb2.Pipeline = await h.clients.pipelines.CreatePipeline(request)
    return created


async def run_to_end(h: Harness, pipeline: weft.Pipeline, **parameters: str) -> run_pb2.Run:
    created = await create(h, pipeline)
    return await h.wait((await h.run(created.name, parameters, version=created.version)).name, timeout=90)


async def test_every_supported_type_round_trips_between_function_steps(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    with weft.Pipeline("types") as p:
        parts = fm.produce(count=p.parameter("count", default="4"), ratio=0.5, enabled=True, missing=None)
        data = fm.blob(size=3)
        folder = fm.tree(files=2)
        file = fm.one_file(text="héllo\n")
        summary = fm.consume(head=parts.head, tail=parts.tail, data=data, tree=folder, file=file, nothing=None)
        fm.total_of(parts=[summary.total, 1.5, summary.total])

    run = await run_to_end(h, p)

    assert run.state == SUCCEEDED, run.message
    assert set(states(run).values()) == {"SUCCEEDED"}
    # On the wire: text raw, JSON with sorted keys, bytes raw, a directory as a tar.
    assert await h.output(run, "produce", "head") == b"c=4 r=0.5 e=True m=None"
    assert await h.output(run, "produce", "tail") == json.dumps([0, 1, 2, 3], indent=2).encode()
    assert await h.output(run, "blob", "result") == b"\x00\x01\x02"
    assert await h.output(run, "one-file", "file") == "héllo\n".encode()
    archive = h.tmp / "tree.tar"
    archive.write_bytes(await h.output(run, "tree", "tree"))
    with tarfile.open(archive) as opened:
        assert sorted(opened.getnames()) == ["sub", "sub/0.txt", "sub/1.txt"]
    flags = json.loads(await h.output(run, "consume", "flags"))
    assert flags == {
        "head": "c=4 r=0.5 e=True m=None",
        "files": ["sub/0.txt", "sub/1.txt"],
        "file": "héllo\n",
        "nothing": None,
        "data": [0, 1, 2],
    }
    assert json.loads(await h.output(run, "consume", "total")) == 9.0
    assert json.loads(await h.output(run, "total-of", "result")) == 19.5


async def test_a_raising_function_fails_its_step_with_the_traceback(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    with weft.Pipeline("raises") as p:
        fm.length(text=fm.shout(word="x"))
        fm.fails(depth=2)

    run = await run_to_end(h, p)

    assert run.state == run_pb2.Run.STATE_FAILED
    failed = steps_by_name(run)["fails"]
    assert "ValueError: no data for shard 2" in failed.message
    assert "in dive" in failed.message  # the traceback's last frames
    assert "raise ValueError(f'no data for shard {depth}')" in failed.message
    # The run's message names the exception on its first line and quotes the traceback's
    # last frames, bounded, without the runner's repetition of the exception.
    first, *frames = run.message.splitlines()
    assert first == "step fails failed: exit code 1: ValueError: no data for shard 2"
    assert frames[0] == "Traceback (most recent call last):"
    assert any(line.strip().endswith("in dive") for line in frames)
    assert "    raise ValueError(f'no data for shard {depth}')" in frames
    assert frames[-1] == "ValueError: no data for shard 2"
    assert len(run.message) <= 2000
    log = (await h.blob(failed.attempts[-1].stderr_digest)).decode()
    assert "Traceback (most recent call last)" in log
    assert "weft: fails raised ValueError" in log


async def test_an_edit_reruns_the_function_and_its_downstream_and_a_move_reruns_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    await h.start_executor()

    def pipeline(shout: weft.Function[..., str]) -> weft.Pipeline:
        with weft.Pipeline("edits") as p:
            fm.length(text=shout(word="data"))
            fm.blob(size=2)
        return p

    first = await run_to_end(h, pipeline(fm.shout))
    assert states(first) == {"shout": "SUCCEEDED", "length": "SUCCEEDED", "blob": "SUCCEEDED"}

    moved = await run_to_end(h, pipeline(moved_module.shout))
    assert states(moved) == {"shout": "CACHED", "length": "CACHED", "blob": "CACHED"}

    edited_module = _module(
        tmp_path / "edited.py",
        "from __future__ import annotations\nimport weft\n\n"
        '@weft.function(outputs="text")\ndef shout(word: str) -> str:\n    return word.upper() + "!!"\n',
    )
    edited = await run_to_end(h, pipeline(edited_module.shout))
    assert states(edited) == {"shout": "SUCCEEDED", "length": "SUCCEEDED", "blob": "CACHED"}
    assert await h.output(edited, "length", "n") == b"6"
    explanation = await h.explain(edited.name, "shout")
    assert "weft.function.json" in str(explanation)


def _module(path: Path, source: str) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_wheel(directory: Path) -> Path:
    """A pure-Python wheel built with zipfile: no network and no build backend needed."""
    wheel = directory / "weft_tiny-1.0-py3-none-any.whl"
    files = {
        "weft_tiny/__init__.py": 'VALUE = "from the tiny wheel"\n',
        "weft_tiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: weft-tiny\nVersion: 1.0\n",
        "weft_tiny-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "weft_tiny-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr("weft_tiny-1.0.dist-info/RECORD", record)
    return wheel


async def test_requirements_are_installed_once_and_reused(harness: Harness, tmp_path: Path) -> None:
    h = harness
    home = tmp_path / "home"
    home.mkdir()
    # The runner caches virtualenvs under $HOME/.cache; the executor passes HOME to steps.
    await h.start_executor(environ={**os.environ, "HOME": str(home)})
    wheel = _tiny_wheel(tmp_path)

    @weft.function(requirements=[f"weft-tiny @ {wheel.as_uri()}"], cache=False, env={"PIP_NO_INDEX": "1"})
    def tiny(suffix: str) -> str:
        import weft_tiny  # type: ignore[import-not-found]

        return str(weft_tiny.VALUE) + suffix

    with weft.Pipeline("needs") as p:
        tiny(suffix="!")

    first = await run_to_end(h, p)
    second = await run_to_end(h, p)

    for run in (first, second):
        assert run.state == SUCCEEDED, run.message
        assert await h.output(run, "tiny", "result") == b"from the tiny wheel!"
    first_log = (await h.blob(steps_by_name(first)["tiny"].attempts[-1].stderr_digest)).decode()
    second_log = (await h.blob(steps_by_name(second)["tiny"].attempts[-1].stderr_digest)).decode()
    assert "weft: installing weft-tiny" in first_log
    assert "installing" not in second_log
    assert "weft: reusing requirements" in second_log
    venvs = list((home / ".cache" / "weft" / "functions" / "venvs").glob("*/weft-complete"))
    assert len(venvs) == 1
