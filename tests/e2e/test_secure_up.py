"""`weft up --secure`: TLS everywhere and token auth from one command, then the CLI and the
README's grpcurl lines against it; without a token or with plaintext, nothing works."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import WEFT, Up, start_up, stop_up
from tests.e2e.test_grpcurl import grpcurl_binary

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]

PIPELINE = """
name: hello
spec:
  steps:
    - name: greet
      container: {image: "busybox:1.36", command: [sh, -c, 'printf hi > "$WEFT_OUTPUTS/out"']}
      outputs: [{name: out}]
"""


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = start_up(tmp_path_factory.mktemp("secure-up") / "state", "--secure")
    yield up
    stop_up(up)


def weft(up: Up, *args: str, token: str | None, ca: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env.update({"WEFT_SERVER": up.api, "NO_COLOR": "1", "COLUMNS": "250"})
    if token is not None:
        env["WEFT_TOKEN"] = token
    if ca:
        env["WEFT_CA_CERT"] = str(up.state_dir / "secure" / "ca.crt")
    return subprocess.run([WEFT, *args], capture_output=True, text=True, env=env, timeout=60)


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_secure_up_prints_how_to_use_it_and_keeps_secrets_out_of_its_files(secure_stack: Up) -> None:
    output = secure_stack.output.read_text()
    secure = secure_stack.state_dir / "secure"
    assert f'export WEFT_TOKEN="$(cat {secure / "admin.token"})" WEFT_CA_CERT={secure / "ca.crt"}' in output
    assert f"grpcurl -cacert {secure / 'ca.crt'}" in output
    token = (secure / "admin.token").read_text().strip()
    assert (secure / "admin.token").stat().st_mode & 0o077 == 0
    assert (secure / "server.key").stat().st_mode & 0o077 == 0
    for path in (secure / "tokens.yaml", secure_stack.output, *secure_stack.state_dir.glob("logs/*.log")):
        assert token not in path.read_text(errors="replace"), path


def test_the_cli_needs_the_token_and_the_ca(secure_stack: Up, tmp_path: Path) -> None:
    token = (secure_stack.state_dir / "secure" / "admin.token").read_text().strip()
    refused = weft(secure_stack, "runs", "list", token=None)
    assert refused.returncode == 1
    assert "no credentials" in refused.stderr
    wrong_ca = weft(secure_stack, "runs", "list", token=token, ca=False)
    assert wrong_ca.returncode == 1
    pipeline = tmp_path / "hello.yaml"
    pipeline.write_text(PIPELINE)
    assert weft(secure_stack, "apply", "-f", str(pipeline), token=token).returncode == 0
    ran = weft(secure_stack, "run", "hello", "--watch", token=token)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    outputs = weft(secure_stack, "outputs", _run_name(ran.stdout), token=token)
    assert outputs.returncode == 0, outputs.stderr
    assert "hi" in outputs.stdout


def _run_name(text: str) -> str:
    match = re.search(r"hello-[a-z0-9]{5}", text)
    assert match, text
    return match.group(0)


def test_the_readme_commands_work_against_a_secure_stack(secure_stack: Up) -> None:
    block = readme_block("Who may do what").replace("\\\n", "")
    lines = [line for line in block.splitlines() if line.startswith(("export", "weft runs", "grpcurl"))]
    assert len(lines) == 4, lines
    script = "\n".join(lines)
    script = script.replace(".weft/", f"{secure_stack.state_dir}/").replace("127.0.0.1:50051", secure_stack.api)
    script = script.replace("grpcurl ", f"{grpcurl_binary()} ").replace("weft runs", f"{WEFT} runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env["WEFT_SERVER"] = secure_stack.api
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "weft.v1.RunService" in result.stdout
    plaintext = subprocess.run(
        [grpcurl_binary(), "-plaintext", secure_stack.api, "list"], capture_output=True, text=True, timeout=30
    )
    assert plaintext.returncode != 0


def test_the_tracer_needs_the_token_and_receives_the_services_spans_over_tls(secure_stack: Up, tmp_path: Path) -> None:
    token = (secure_stack.state_dir / "secure" / "admin.token").read_text().strip()
    found = re.search(r"weft-tracer\s+(127\.0\.0\.1:\d+)", secure_stack.output.read_text())
    assert found, secure_stack.output.read_text()
    tracer = found.group(1)
    pipeline = tmp_path / "hello.yaml"
    pipeline.write_text(PIPELINE)
    assert weft(secure_stack, "apply", "-f", str(pipeline), token=token).returncode == 0
    ran = weft(secure_stack, "run", "hello", "--watch", token=token)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run = _run_name(ran.stdout)
    refused = weft(secure_stack, "events", run, "--tracer", tracer, token=None)
    assert refused.returncode == 1
    assert "no credentials" in refused.stderr
    # The timeline comes from etcd, which the tracer reaches over TLS with a client certificate.
    events = weft(secure_stack, "events", run, "--tracer", tracer, token=token)
    assert events.returncode == 0, events.stderr
    assert "COMMITTED" in events.stdout, events.stdout
    # The services export to the tracer over TLS with their token (batched: give it time).
    deadline = time.monotonic() + 30
    while True:
        traced = weft(secure_stack, "trace", run, "-o", "json", "--tracer", tracer, token=token)
        assert traced.returncode == 0, traced.stderr
        if '"spans"' in traced.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert '"spans"' in traced.stdout, traced.stdout


SPAN_TOKEN_PIPELINE = """
name: token
spec:
  steps:
    - name: show
      container:
        image: "busybox:1.36"
        command: [sh, -c, 'printf %s "$OTEL_EXPORTER_OTLP_HEADERS" > "$WEFT_OUTPUTS/out"']
      outputs: [{name: out}]
"""


def test_a_steps_span_token_is_accepted_by_the_tracer_for_its_runs_trace(secure_stack: Up, tmp_path: Path) -> None:
    """`weft up --secure` gives the executors and the tracer one span token key: the token a
    step gets (here written to its output, to try it) exports spans into its run's trace."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    secure = secure_stack.state_dir / "secure"
    key = (secure / "span-token.key").read_text().strip()
    assert (secure / "span-token.key").stat().st_mode & 0o077 == 0
    token = (secure / "admin.token").read_text().strip()
    found = re.search(r"weft-tracer\s+(127\.0\.0\.1:\d+)", secure_stack.output.read_text())
    assert found, secure_stack.output.read_text()
    tracer = found.group(1)
    pipeline = tmp_path / "token.yaml"
    pipeline.write_text(SPAN_TOKEN_PIPELINE)
    assert weft(secure_stack, "apply", "-f", str(pipeline), token=token).returncode == 0
    ran = weft(secure_stack, "run", "token", "--watch", token=token)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    match = re.search(r"token-[a-z0-9]{5}", ran.stdout)
    assert match, ran.stdout
    run = match.group(0)
    saved = tmp_path / "outputs"
    shown = weft(secure_stack, "outputs", run, "show", "--dir", str(saved), token=token)
    assert shown.returncode == 0, shown.stderr
    written = "".join(path.read_text() for path in saved.rglob("*") if path.is_file())
    header = re.fullmatch(r"authorization=Bearer%20(wst1\.[A-Za-z0-9_.-]+)", written)
    assert header, written
    span_token = header.group(1)

    traced = weft(secure_stack, "trace", run, "-o", "json", "--tracer", tracer, token=token)
    assert traced.returncode == 0, traced.stderr
    trace_id = re.search(r'"(?:trace_id|traceId)":\s*"([0-9a-f]{32})"', traced.stdout)
    assert trace_id, traced.stdout
    now = time.time_ns()
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes.fromhex(trace_id.group(1)),
        span_id=(0x5EC0).to_bytes(8, "big"),
        name="step.own-span",
        start_time_unix_nano=now,
        end_time_unix_nano=now + 1000,
    )
    credentials = grpc.ssl_channel_credentials((secure / "ca.crt").read_bytes())
    with grpc.secure_channel(tracer, credentials) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        answer = export(request, metadata=(("authorization", f"Bearer {span_token}"),), timeout=10)
    assert answer.partial_success.rejected_spans == 0, answer
    deadline = time.monotonic() + 30
    while "step.own-span" not in traced.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        traced = weft(secure_stack, "trace", run, "-o", "json", "--tracer", tracer, token=token)
    assert "step.own-span" in traced.stdout, traced.stdout
    for path in (secure_stack.output, *secure_stack.state_dir.glob("logs/*.log")):
        text = path.read_text(errors="replace")
        assert key not in text, path
        assert span_token not in text, path
