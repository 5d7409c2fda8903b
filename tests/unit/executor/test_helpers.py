"""Small pure parts of the executor: redaction, names, sizes, backoff, configuration."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from weft.v1 import pipeline_pb2
from weft_core.units import human_bytes, human_seconds
from weft_executor.config import ExecutorConfig
from weft_executor.progress import summary
from weft_executor.runtime.local import Redactor, secret_variable
from weft_executor.steps import backoff_seconds, env_suffix


def test_redactor_masks_secrets_split_across_chunks() -> None:
    redactor = Redactor([b"s3cret", b"pw"])
    chunks = [b"user pw=s3", b"cr", b"et done s", b"3cret"]
    out = b"".join(redactor.feed(chunk) for chunk in chunks) + redactor.flush()
    assert out == b"user *****=***** done *****"


def test_redactor_without_secrets_passes_data_through() -> None:
    redactor = Redactor([])
    assert redactor.feed(b"abc") == b"abc"
    assert redactor.flush() == b""


def test_secret_variable_names() -> None:
    assert secret_variable("db", "password") == "WEFT_SECRET_DB_PASSWORD"
    assert secret_variable("api-token", "value.v1") == "WEFT_SECRET_API_TOKEN_VALUE_V1"


def test_human_units() -> None:
    assert human_bytes(1000) == "1000 bytes"
    assert human_bytes(2000) == "2.0 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_seconds(0.5) == "0.5s"
    assert human_seconds(90) == "1m30s"
    assert human_seconds(3600) == "1h"


def test_env_suffix() -> None:
    assert env_suffix("input-path") == "INPUT_PATH"
    assert env_suffix("size") == "SIZE"


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def test_backoff_defaults_and_growth() -> None:
    default = pipeline_pb2.RetryPolicy(max_attempts=5)
    assert [backoff_seconds(default, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    custom = pipeline_pb2.RetryPolicy(backoff=seconds(0.5), backoff_factor=3, max_backoff=seconds(2))
    assert [backoff_seconds(custom, n) for n in (1, 2, 3)] == [0.5, 1.5, 2.0]
    assert backoff_seconds(pipeline_pb2.RetryPolicy(), 30) == 300.0


def test_failure_summary_keeps_the_first_line_only() -> None:
    assert summary("exit code 3; last stderr lines:\ndisk full") == "exit code 3"
    # The kubernetes runtime's wording (its log interleaves stdout and stderr): the same.
    assert summary("exit code 4; last log lines:\nreading\nbad row 17") == "exit code 4"
    assert summary("timed out after 2s") == "timed out after 2s"
    assert summary("") == "failed"


def test_config_from_flags_and_environment() -> None:
    config = ExecutorConfig.from_args(
        ["--api", "127.0.0.1:5000", "--work-dir", "/tmp/w", "--max-parallel", "3", "--lease-ttl", "2"],
        {"WEFT_ETCD_ENDPOINTS": "http://127.0.0.1:2379", "WEFT_EXECUTOR_ID": "node-1", "WEFT_MAX_PARALLEL": "9"},
    )
    assert config.etcd_endpoints == "http://127.0.0.1:2379"
    assert config.max_parallel == 3  # the flag wins over the variable
    assert config.executor_id == "node-1"
    assert config.lease_ttl == 2
    assert config.runtime == "local"
    assert config.listen == "127.0.0.1:0"
    assert config.max_output_bytes == 1024**3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runtime", "docker"], "--runtime"),
        (["--lease-ttl", "1"], "--lease-ttl"),
        (["--executor-id", "Bad/Id"], "--executor-id"),
        (["--max-parallel", "0"], "--max-parallel"),
    ],
)
def test_bad_settings_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--api", "127.0.0.1:5000", "--work-dir", "/tmp/w", "--etcd-endpoints", "http://127.0.0.1:2379"]
    with pytest.raises(SystemExit):
        ExecutorConfig.from_args(base + argv, {})
    assert message in capsys.readouterr().err


def test_kubernetes_settings_parse() -> None:
    config = ExecutorConfig.from_args(
        [
            "--etcd-endpoints", "http://127.0.0.1:2379", "--api", "weft-api:50051", "--runtime", "kubernetes",
            "--namespace", "steps", "--pod-node-selector", "disk=ssd,zone=a",
            "--pod-tolerations", '[{"key": "gpu", "operator": "Exists"}]',
        ],
        {},
    )  # fmt: skip
    assert config.runtime == "kubernetes"
    assert config.kube.namespace == "steps"
    assert dict(config.kube.pod_node_selector) == {"disk": "ssd", "zone": "a"}
    assert config.kube.pod_tolerations == ({"key": "gpu", "operator": "Exists"},)
    assert config.kube.kubeconfig is None
    assert config.kube.keep_failed_pods == 3600.0  # the flag's default is KubeSettings'
    assert config.pod_api == "weft-api:50051"
    assert config.work_dir.name == "weft-attempts"  # not needed by pods, so it has a default
