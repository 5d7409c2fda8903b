"""Small pure parts of the executor: redaction, names, sizes, backoff, configuration."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from weft.v1 import pipeline_pb2
from weft_executor.config import ExecutorConfig
from weft_executor.progress import SUMMARY_MAX_CHARS, SUMMARY_TRACEBACK_LINES, summary
from weft_executor.runtime.local import Redactor, human_bytes, human_seconds, secret_variable
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


FUNCTION_FAILURE = """exit code 1; last stderr lines:
reading shard 2
Traceback (most recent call last):
  File "fails", line 7, in fails
    return dive(depth)
  File "fails", line 5, in dive
    raise ValueError(f'no data for shard {depth}')
ValueError: no data for shard 2
weft: fails raised ValueError: no data for shard 2"""


def test_failure_summary_quotes_a_python_traceback_once() -> None:
    assert summary(FUNCTION_FAILURE) == "\n".join(
        [
            "exit code 1: ValueError: no data for shard 2",
            "Traceback (most recent call last):",
            '  File "fails", line 7, in fails',
            "    return dive(depth)",
            '  File "fails", line 5, in dive',
            "    raise ValueError(f'no data for shard {depth}')",
            "ValueError: no data for shard 2",
        ]
    )
    # The kubernetes runtime quotes the same lines.
    assert summary(FUNCTION_FAILURE.replace("last stderr lines", "last log lines")) == summary(FUNCTION_FAILURE)


def test_failure_summary_of_a_chained_exception_quotes_the_last_traceback() -> None:
    chained = (
        'exit code 1; last stderr lines:\nTraceback (most recent call last):\n  File "a", line 1, in a\n'
        "KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "b", line 2, in b\nRuntimeError: lookup failed'
    )
    assert summary(chained).splitlines() == [
        "exit code 1: RuntimeError: lookup failed",
        "Traceback (most recent call last):",
        '  File "b", line 2, in b',
        "RuntimeError: lookup failed",
    ]


def test_failure_summary_is_bounded_and_keeps_the_innermost_frames() -> None:
    frames = [f'  File "deep", line {i}, in level_{i}\n    ' + "x" * 300 for i in range(40)]
    message = "exit code 1; last stderr lines:\nTraceback (most recent call last):\n" + "\n".join(frames)
    text = summary(message + "\nRecursionError: too deep")
    lines = text.splitlines()
    assert len(text) <= SUMMARY_MAX_CHARS
    assert len(lines) <= SUMMARY_TRACEBACK_LINES
    assert lines[0] == "exit code 1: RecursionError: too deep"
    assert lines[1:3] == ["Traceback (most recent call last):", "  ..."]
    assert lines[-1] == "RecursionError: too deep"
    assert "in level_39" in lines[-3]  # the innermost frame survives
    assert all(len(line) <= 240 for line in lines)


def test_failure_summary_of_a_traceback_whose_start_was_cut_off_keeps_the_frames_left() -> None:
    # Ten quoted lines of Python 3.11's output, whose ^^^^ markers took the header's place.
    cut = (
        "exit code 1; last stderr lines:\n"
        '  File "<weft.function fails>", line 6, in dive\n    return dive(level - 1)\n           ^^^^^^^^^^^^^^^\n'
        '  File "<weft.function fails>", line 5, in dive\n    raise ValueError("no data")\n'
        "ValueError: no data\nweft: fails raised ValueError: no data"
    )
    assert summary(cut).splitlines() == [
        "exit code 1: ValueError: no data",
        "Traceback (most recent call last):",
        "  ...",
        '  File "<weft.function fails>", line 6, in dive',
        "    return dive(level - 1)",
        '  File "<weft.function fails>", line 5, in dive',
        '    raise ValueError("no data")',
        "ValueError: no data",
    ]


def test_failure_summary_names_the_exception_when_no_frame_is_left() -> None:
    cut = "exit code 1; last stderr lines:\n    raise OSError(5)\nOSError: 5\nweft: load raised OSError: 5"
    assert summary(cut) == "exit code 1: load raised OSError: 5"


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
