"""`weft trace` and `weft events` against a real `weft up` (etcd, weft-tracer, weft-api and
one weft-executor), on a known run: a cache hit, a retry, a failure and a skipped step.

The Gantt is checked line by line (steps in order, bars, marks), the events in order,
the replay against the listing, and the `--html` page in a real headless Chromium
(Debian's `chromium`, installed by `./dev test`): no console errors, every step in the
rendered DOM, and a screenshot. Set WEFT_DOCS_SCREENSHOT=1 to refresh docs/trace-page.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import weft
from tests.e2e.test_cli import WEFT, Up, _executor_works, start_up, stop_up
from tests.kube.cluster import require_kube

pytestmark = pytest.mark.slow  # each test drives a real `weft up` with an executor

ROOT = Path(__file__).resolve().parents[2]
_TRACER = re.compile(r"weft up: ready, api \S+:\d+, tracer (\S+:\d+)")
STEPS = ["prep", "flaky", "doomed", "after"]


def pipeline_yaml(name: str, mark: Path, steps: list[str]) -> str:
    flaky = f'if [ ! -f {mark} ]; then touch {mark}; echo "first try" >&2; exit 3; fi; '
    flaky += 'sleep 0.3; printf ok > "$WEFT_OUTPUTS/out"'
    bodies = {
        "prep": """
    - name: prep
      container: {image: busybox, command: [sh, -c, 'printf prep > "$WEFT_OUTPUTS/out"']}
      outputs: [{name: out}]""",
        "flaky": f"""
    - name: flaky
      container:
        image: busybox
        command: [sh, -c, '{flaky}']
      inputs: [{{name: in, stepOutput: {{step: prep, output: out}}}}]
      outputs: [{{name: out}}]
      retry: {{maxAttempts: 2, backoff: 0.1s}}""",
        "doomed": """
    - name: doomed
      container: {image: busybox, command: [sh, -c, 'echo "no disk left" >&2; exit 1']}
      dependsOn: [flaky]""",
        "after": """
    - name: after
      container: {image: busybox, command: [sh, -c, 'true']}
      dependsOn: [doomed]""",
    }
    return f"name: {name}\nspec:\n  steps:" + "".join(bodies[s] for s in steps) + "\n"


@dataclass
class Story:
    up: Up
    tracer: str
    run: str
    env: dict[str, str]

    def weft(self, *args: str, columns: int = 110, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "COLUMNS": str(columns)}
        return subprocess.run([WEFT, *args], capture_output=True, text=True, env=env, timeout=timeout)

    def ok(self, *args: str, columns: int = 110) -> str:
        result = self.weft(*args, columns=columns)
        assert result.returncode == 0, f"weft {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    """`weft up` with an executor, and one finished run of the story pipeline."""
    if not _executor_works():
        pytest.skip("weft-executor is not installed")
    tmp = tmp_path_factory.mktemp("trace")
    up = start_up(tmp / "state")
    try:
        match = _TRACER.search(up.output.read_text())
        assert match, up.output.read_text()
        env = {**os.environ, "WEFT_SERVER": up.api, "WEFT_TRACER": match.group(1), "NO_COLOR": "1"}
        # Where the step can write it: run by root, `weft up` runs steps as nobody, who
        # cannot enter pytest's private tmp dir.
        shared = Path(tempfile.mkdtemp(prefix="weft-mark-"))
        shared.chmod(0o777)
        mark = shared / "failed-once"
        seed = tmp / "seed.yaml"
        seed.write_text(pipeline_yaml("seed", mark, ["prep"]))
        full = tmp / "story.yaml"
        full.write_text(pipeline_yaml("story", mark, STEPS))
        with weft.Client.connect(up.api) as client:
            subprocess.run([WEFT, "apply", "-f", str(seed), "-f", str(full)], env=env, check=True, timeout=60)
            seeded = client.create_run("seed").wait(60)
            assert seeded.state == "SUCCEEDED", seeded.pb.message
            run = client.create_run("story").wait(60)
            assert run.state == "FAILED", run.pb.message
        story = Story(up, match.group(1), run.full_name, env)
        # The executor exports every 5 s by default: wait until its spans are stored.
        deadline = time.monotonic() + 20
        while "CLAIMED" not in story.ok("events", run.full_name) or "LAUNCHED" not in story.ok("events", run.full_name):
            assert time.monotonic() < deadline, story.ok("events", run.full_name)
            time.sleep(0.5)
        yield story
    finally:
        stop_up(up)


def test_weft_trace_draws_each_step_in_order_with_its_bars_and_marks(story: Story) -> None:
    output = story.ok("trace", story.run, columns=100)
    lines = output.splitlines()
    assert lines[0].startswith(f"run {story.run}  FAILED")
    rows = [line for line in lines if "│" in line and not line.lstrip().startswith("└")]
    assert [row.split("│")[0].strip() for row in rows] == STEPS
    for line in lines:
        assert len(line) <= 100, line
    row = dict(zip(STEPS, rows, strict=True))
    assert "◆" in row["prep"]
    assert "CACHED" in row["prep"]
    assert "cache hit" in row["prep"]
    bar = row["flaky"].split("│")[1]
    assert "✗" in bar  # the first attempt failed
    assert "█" in bar.split("✗")[-1]  # the retry ran after it and succeeded
    assert "2 attempts, 1 retried" in row["flaky"]
    assert "✗" in row["doomed"].split("│")[1]
    assert "FAILED" in row["doomed"]
    assert "SKIPPED" in row["after"]
    assert set(row["after"].split("│")[1]) <= {" ", "·"}  # never launched
    assert "◆ cache hit" in output  # the legend names the marks used
    assert "⊘" not in output  # and only those


def test_weft_trace_fits_a_narrow_terminal(story: Story) -> None:
    for line in story.ok("trace", story.run, columns=60).splitlines()[:-1]:
        assert len(line) <= 60, line


def test_weft_events_lists_the_timeline_and_the_replay_plays_the_same(story: Story) -> None:
    listed = story.ok("events", story.run)
    # The failed attempt's reason, wherever the table wrapped it (the "where" column,
    # "host H pid P", leaves the reason fewer columns).
    assert "first try" in " ".join(listed.split())
    assert "CACHE_HIT" in listed
    events = json.loads(story.ok("events", story.run, "-o", "json"))
    kinds = [f"{e['kind'].removeprefix('KIND_')} {e.get('step', '')}".strip() for e in events]
    for wanted in [
        "CACHE_HIT prep",
        "COMMITTED prep",
        "ATTEMPT_FAILED flaky",
        "RETRIED flaky",
        "COMMITTED flaky",
        "ATTEMPT_FAILED doomed",
        "FAILED doomed",
        "SKIPPED after",
        "RUN_FINISHED",
    ]:
        assert wanted in kinds, (wanted, kinds)
    assert kinds.index("RETRIED flaky") < kinds.index("COMMITTED flaky") < kinds.index("FAILED doomed")
    assert kinds.index("FAILED doomed") < kinds.index("SKIPPED after") < kinds.index("RUN_FINISHED")
    started = time.monotonic()
    replayed = story.ok("events", story.run, "--replay", "--speed", "50")
    assert time.monotonic() - started < 30
    replay_kinds = [line.split()[1] for line in replayed.splitlines() if line.startswith("+")]
    assert replay_kinds == [k.split()[0] for k in kinds]
    only = json.loads(story.ok("events", story.run, "--step", "flaky", "-o", "json"))
    assert {e.get("step", "") for e in only} == {"", "flaky"}
    assert any(e["kind"] == "KIND_RETRIED" for e in only)
    refused = story.weft("events", story.run, "--replay", "--speed", "0")
    assert refused.returncode == 1
    assert "--speed" in refused.stderr


def test_weft_trace_says_which_tracer_it_could_not_reach(story: Story, tmp_path: Path) -> None:
    story.env["WEFT_RETRY_SECONDS"] = "0.5"
    try:
        result = story.weft("events", story.run, "--tracer", "127.0.0.1:1")
    finally:
        del story.env["WEFT_RETRY_SECONDS"]
    assert result.returncode == 1
    assert "weft-tracer at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        require_kube("chromium is not installed (./dev test installs it: apt-get install -y chromium)")
    assert found is not None
    return found


def test_the_html_page_renders_every_step_without_console_errors(story: Story, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "trace.html"
    story.ok("trace", story.run, "--html", str(page))
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing loaded from the network
    assert "https://" not in text
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dumped = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    errors = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert errors == [], errors
    dom = dumped.stdout
    for step in STEPS:
        assert f'data-step="{step}"' in dom, step
        assert dom.count(f'data-step="{step}"') == 2  # a timeline row and a DAG node
    assert "CACHE_HIT" in dom  # the events table was drawn from weft-tracer's timeline
    assert "no disk left" in dom  # the failed step's log tail, in the details shown first
    shot = tmp_path / "trace.png"
    subprocess.run(
        [chromium, *flags, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    if os.environ.get("WEFT_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "trace-page.png")


def test_a_page_script_error_would_be_caught(tmp_path: Path) -> None:
    """The console check above can fail: a page with a broken script is reported."""
    chromium = _chromium()
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    dumped = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert any("undefinedFunction" in line for line in dumped.stderr.splitlines()), dumped.stderr


def test_weft_up_jaeger_forwards_every_span_to_the_given_otlp_endpoint(tmp_path: Path) -> None:
    """`weft up --jaeger HOST:PORT`, with a second weft-tracer standing in for Jaeger."""
    from tests.integration.tracer.support import TracerProcess

    jaeger = TracerProcess(tmp_path / "jaeger")
    (tmp_path / "jaeger").mkdir()
    jaeger.start()
    up = start_up(tmp_path / "state", "--no-executor", "--jaeger", jaeger.address)
    try:
        match = _TRACER.search(up.output.read_text())
        assert match, up.output.read_text()
        assert f"forwarding to {jaeger.address}" in up.output.read_text()
        with weft.Client.connect(up.api, tracer=match.group(1)) as client:
            pipeline = tmp_path / "one.yaml"
            pipeline.write_text(pipeline_yaml("one", tmp_path / "mark", ["prep"]))
            subprocess.run([WEFT, "-s", up.api, "apply", "-f", str(pipeline)], check=True, timeout=60)
            run = client.create_run("one")  # no executor: CreateRun's span is all there is

            deadline = time.monotonic() + 30
            while True:
                status = client.tracer_status()
                with weft.Client.connect(up.api, tracer=jaeger.address) as target:
                    forwarded = target.tracer_status()
                if status.forwarded >= 1 and forwarded.stored == status.forwarded:
                    break
                assert time.monotonic() < deadline, (status, forwarded)
                time.sleep(0.3)
            assert status.forward_endpoint == jaeger.address
            assert status.forward_dropped == 0
            assert status.received == status.stored + status.duplicates + status.dropped + status.queued
            with weft.Client.connect(up.api, tracer=jaeger.address) as target:
                names = {s.name for s in target.get_run_trace(run.full_name).spans}
            assert "weft.CreateRun" in names
    finally:
        stop_up(up)
        jaeger.stop()


def test_weft_trace_follow_redraws_until_the_run_ends(story: Story, tmp_path: Path) -> None:
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(
        "name: slowpoke\nspec:\n  steps:\n    - name: nap\n"
        "      container: {image: busybox, command: [sh, -c, 'sleep 2']}\n"
    )
    story.ok("apply", "-f", str(pipeline))
    with weft.Client.connect(story.up.api) as client:
        run = client.create_run("slowpoke", cache_mode="off")
        started = time.monotonic()
        followed = story.weft("trace", run.full_name, "--follow", timeout=120)
        assert followed.returncode == 0, followed.stderr
        assert time.monotonic() - started >= 1.0  # it waited for the run instead of drawing once
        assert client.get_run(run.full_name).state == "SUCCEEDED"
    rows = [line for line in followed.stdout.splitlines() if line.startswith("nap")]
    assert rows
    assert "█" in rows[-1]
    assert "SUCCEEDED" in rows[-1]
