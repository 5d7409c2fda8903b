"""Backup and restore of weft's etcd with the commands docs/operations.md gives.

A real stack (`LocalStack`, what `weft up` runs) finishes one run and has a second in
flight; `etcdctl snapshot save` takes a snapshot; the stack stops and its etcd data is
lost; `etcdctl snapshot restore` rebuilds the data directory, and the restarted stack has
the pipeline, both runs and the outcomes back: the finished run reads the same, the
in-flight run is resumed to SUCCEEDED, and a third run is served from the restored cache.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import weft
from tests.support import assert_eventually
from weft.localstack import LocalStack, find_service

ETCDCTL = shutil.which("etcdctl")

pytestmark = [
    pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed (apt-get install etcd-client)"),
    pytest.mark.skipif(find_service("weft-executor") is None, reason="weft-executor is not installed"),
]


def etcdctl(*args: str) -> str:
    assert ETCDCTL is not None
    result = subprocess.run(
        [ETCDCTL, *args], capture_output=True, text=True, timeout=60, env={"ETCDCTL_API": "3", "PATH": "/usr/bin"}
    )
    assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def pipeline(release: Path) -> weft.Pipeline:
    p = weft.Pipeline("backed-up", parameters={"word": "hello", "gate": "no"})
    first = p.step(
        "first",
        image="python:3.11-slim",
        # Waits for the release file only when asked to (the run kept in flight).
        command=[
            "sh",
            "-c",
            f'if [ "$(cat $WEFT_INPUTS/gate)" = yes ]; then while [ ! -e {release} ]; do sleep 0.05; done; fi; '
            "tr a-z A-Z < $WEFT_INPUTS/word > $WEFT_OUTPUTS/loud",
        ],
        inputs={"word": p.param("word"), "gate": p.param("gate")},
        outputs=["loud"],
    )
    p.step(
        "second",
        image="python:3.11-slim",
        command=["sh", "-c", "cat $WEFT_INPUTS/loud $WEFT_INPUTS/loud > $WEFT_OUTPUTS/out"],
        inputs={"loud": first.output("loud")},
        outputs=["out"],
    )
    return p


def test_a_restored_snapshot_brings_back_pipelines_runs_and_outcomes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    release = tmp_path / "release"
    snapshot = tmp_path / "weft-etcd.db"
    stack = LocalStack(state, port=0, executors=1)
    stack.start()
    try:
        with weft.Client.connect(stack.api_target, namespace="ops") as client:
            version = client.apply(pipeline(release)).pipeline.version
            done = client.create_run("backed-up", {"word": "weft"}).wait(timeout=60)
            assert done.state == "SUCCEEDED", done.message
            in_flight = client.create_run("backed-up", {"word": "later", "gate": "yes"})
            assert_eventually(
                lambda: [s.state for s in client.get_run(in_flight.name).steps if s.name == "first"] == ["RUNNING"],
                timeout=30,
                what="the second run's first step running",
            )

        # The guide's backup: one command against any member.
        out = etcdctl("--endpoints", stack.etcd_endpoint, "snapshot", "save", str(snapshot))
        assert "Snapshot saved" in out
        etcdctl("--write-out=table", "snapshot", "status", str(snapshot))
    finally:
        stack.stop()

    # Disaster: etcd's data is gone.
    shutil.rmtree(state / "etcd")

    # The guide's restore: rebuild the data directory from the snapshot, then start weft.
    etcdctl(
        "snapshot", "restore", str(snapshot),
        "--name", "weft",
        "--data-dir", str(state / "etcd"),
        "--initial-cluster", "weft=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
    )  # fmt: skip
    restored = LocalStack(state, port=0, executors=1)
    restored.start()
    try:
        with weft.Client.connect(restored.api_target, namespace="ops") as client:
            assert client.get_pipeline("backed-up").version == version
            again = client.get_run(done.name)
            assert again.state == "SUCCEEDED"
            assert again.outputs() == {"first": {"loud": b"WEFT"}, "second": {"out": b"WEFTWEFT"}}
            # The run that was in flight resumes (its old claim expires with its lease).
            release.touch()
            resumed = client.get_run(in_flight.name).wait(timeout=60)
            assert resumed.state == "SUCCEEDED", resumed.message
            assert resumed.outputs("second") == {"second": {"out": b"LATERLATER"}}
            # The outcomes came back: the same work is a cache hit.
            cached = client.create_run("backed-up", {"word": "weft"}).wait(timeout=60)
            assert [s.state for s in cached.steps] == ["CACHED", "CACHED"]
    finally:
        restored.stop()
