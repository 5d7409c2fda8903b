"""The weft demo (the body of `make demo`, once the virtualenv and etcd are installed).

It starts a local stack with the same code as `weft up` (etcd, weft-api, one
weft-executor with the local runtime) in a fresh state directory, then:

1. applies examples/etl/pipeline.yaml (a fan-out of three transforms and a join),
2. runs it to completion with live progress and prints its report,
3. runs it again: every step is CACHED and nothing is launched,
4. applies examples/etl/pipeline_edited.yaml (one transform edited),
5. runs that: only the edited step and its downstream run again; the rest is reused,
6. applies examples/etl_functions.py (the same pipeline as Python functions) and runs it:
   its report is byte-for-byte the YAML pipeline's,

checking each of these claims (exit code 1 if one does not hold), and stops the stack.
It is a client of the stack like any other: it never reads etcd itself.

Usage: python scripts/demo.py [--rows N] [--state-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.text import Text

import weft
from weft.cli._output import console
from weft.cli._watch import follow_run
from weft.localstack import LocalStack, find_etcd

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "etl" / "pipeline.yaml"
EXAMPLE_EDITED = ROOT / "examples" / "etl" / "pipeline_edited.yaml"
EXAMPLE_FUNCTIONS = ROOT / "examples" / "etl_functions.py"
EDITED_STEP = "transform-1"
DOWNSTREAM_OF_EDIT = {"transform-1", "aggregate", "report"}


class DemoFailed(Exception):
    """A claim the demo makes did not hold."""


def chapter(number: int, title: str) -> None:
    console.print()
    console.rule(Text(f"{number}. {title}", style="bold"), align="left")


async def run_and_follow(client: weft.AsyncClient, rows: int, label: str, pipeline: str = "etl") -> weft.RunRecord:
    """Starts a run of `pipeline` and shows it until it ends; it must succeed."""
    run = await client.create_run(pipeline, {"rows": str(rows)})
    console.print(Text.assemble(("run ", "dim"), (run.name, "bold"), f" created ({label})"))
    final = await follow_run(client, run.full_name, console)
    if not final.succeeded:
        failed = f"; see `weft logs {final.name} {final.failed_step}`" if final.failed_step else ""
        raise DemoFailed(f"run {final.name} ended {final.state}: {final.message}{failed}")
    return final


async def print_report(run: weft.AsyncRun | weft.RunRecord, client: weft.AsyncClient) -> str:
    digest = run.step("report").outputs["report"]
    report = (await client.get_blob(digest)).decode()
    console.print(Panel(Text(report.rstrip()), title=f"report of {run.name}", expand=False))
    return report


async def demo(api: str, rows: int) -> None:
    async with await weft.AsyncClient.connect(api) as client:
        chapter(1, "apply the pipeline")
        applied = await client.apply(weft.load_pipeline(EXAMPLE))
        console.print(f"pipeline {applied.pipeline.name} version {applied.pipeline.version} ({applied.change})")
        console.print(f"steps: {', '.join(applied.pipeline.step_names)}")

        chapter(2, "run it")
        first = await run_and_follow(client, rows, "every step runs")
        report = await print_report(first, client)

        chapter(3, "run it again: every step is reused from its DNA")
        second = await run_and_follow(client, rows, "same spec, same parameters")
        not_cached = [s.name for s in second.steps if s.state != "CACHED"]
        if not_cached:
            raise DemoFailed(f"steps {', '.join(not_cached)} were not CACHED on the second run")
        launched = sum(len(s.pb.attempts) for s in second.steps)
        console.print(f"all {len(second.steps)} steps CACHED; processes launched: {launched}")
        if launched:
            raise DemoFailed(f"the cached run launched {launched} attempts")

        chapter(4, f"edit one step ({EDITED_STEP}) and apply the new version")
        edited = await client.apply(weft.load_pipeline(EXAMPLE_EDITED))
        console.print(f"pipeline {edited.pipeline.name} version {edited.pipeline.version} ({edited.change})")
        if edited.pipeline.version == applied.pipeline.version:
            raise DemoFailed("the edited pipeline has the same version digest as the original")

        chapter(5, "run the edited version: only the edited step and its downstream run")
        third = await run_and_follow(client, rows, "one step edited")
        reran = {s.name for s in third.steps if s.state == "SUCCEEDED"}
        reused = {s.name for s in third.steps if s.state == "CACHED"}
        console.print(Text.assemble("re-ran: ", (", ".join(sorted(reran)) or "-", "bold blue")))
        console.print(Text.assemble("reused: ", (", ".join(sorted(reused)) or "-", "bold magenta")))
        if reran != DOWNSTREAM_OF_EDIT:
            raise DemoFailed(f"expected exactly {sorted(DOWNSTREAM_OF_EDIT)} to re-run, got {sorted(reran)}")
        explanation = await client.explain_step(third.full_name, EDITED_STEP)
        console.print(f"why {EDITED_STEP} ran: {explanation.decision}, {explanation.reason}")
        new_report = await print_report(third, client)
        if new_report == report:
            raise DemoFailed("the edited pipeline produced the same report")

        chapter(6, "the same pipeline as Python functions (examples/etl_functions.py)")
        functions = await client.apply(_functions_example().build())
        console.print(repr(functions))
        python_run = await run_and_follow(client, rows, "@weft.function steps", pipeline=functions.pipeline.name)
        python_report = await print_report(python_run, client)
        if python_report != report:
            raise DemoFailed("the Python pipeline's report differs from the YAML pipeline's")
        console.print(f"{python_run!r}: the report is byte-for-byte the YAML pipeline's")


def _functions_example() -> Any:
    spec = importlib.util.spec_from_file_location("etl_functions", EXAMPLE_FUNCTIONS)
    if spec is None or spec.loader is None:
        raise DemoFailed(f"cannot load {EXAMPLE_FUNCTIONS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1000, help="orders to generate (default %(default)s)")
    parser.add_argument("--state-dir", type=Path, help="where the stack keeps its data (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the state dir (logs, etcd data) afterwards")
    args = parser.parse_args(argv)
    try:
        find_etcd()
    except FileNotFoundError as error:
        console.print(Text(f"demo: {error}", style="red"))
        return 1

    # A fresh state dir by default: outcomes left by an earlier demo would make the first
    # run CACHED too, which is true but not the story the demo tells.
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="weft-demo-"))
    started = time.monotonic()
    stack = LocalStack(state_dir, port=0, executors=1)
    code = 1
    try:
        with console.status("starting etcd, weft-api and weft-executor"):
            stack.start()
        if not stack.executors:
            reasons = "; ".join(w.message for w in stack.warnings) or "it did not start"
            console.print(
                Text(
                    f"demo: no weft-executor is running ({reasons}).\n"
                    "The demo runs pipelines, which needs weft-executor: pip install -e services/executor",
                    style="red",
                )
            )
            return 1
        console.print(
            f"local stack up: weft-api {stack.api_target}, etcd {stack.etcd_endpoint}, logs in {stack.logs_dir}"
        )
        asyncio.run(demo(stack.api_target, args.rows))
        console.print()
        console.print(Text(f"demo finished in {time.monotonic() - started:.1f}s: every claim held", style="bold green"))
        code = 0
    except DemoFailed as error:
        console.print(Text(f"demo failed: {error}", style="bold red"))
        console.print(f"service logs: {stack.logs_dir}")
        args.keep = True
    except weft.errors.WeftError as error:
        console.print(Text(f"demo failed: {error.message}", style="bold red"))
        args.keep = True
    except (RuntimeError, TimeoutError, FileNotFoundError) as error:
        console.print(Text(f"demo: the local stack did not start: {error}", style="bold red"))
        args.keep = True
    except KeyboardInterrupt:
        console.print("interrupted")
        code = 130
    finally:
        with console.status("stopping the local stack"):
            stack.stop()
        if args.keep or args.state_dir:
            console.print(f"state kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
