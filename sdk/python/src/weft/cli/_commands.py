"""The `weft` commands that talk to weft-api: apply, pipelines, run, runs, logs, explain, diff, lineage,
outputs.

Each command is one coroutine taking the parsed arguments and a connected `AsyncClient`,
returning the process exit code. They print through `weft.cli._output` and raise
`WeftError` for failures, which `weft.cli.main` turns into a message and exit code 1.
They act only through the API: they never read etcd or the artifact store directly, and
write local files only where asked to (`weft outputs --dir`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.text import Text

from weft._client import AsyncClient, AsyncRun
from weft._results import PipelineVersion, RunRecord
from weft.cli import _output as out
from weft.cli._watch import follow_run
from weft.errors import FailedPrecondition, InvalidArgument, NotFound
from weft.pipeline import load_pipeline
from weft.v1 import run_pb2

# `weft outputs` shows this many lines of each output unless asked for all.
_PREVIEW_LINES = 40

_CHANGE_TEXT = {
    "created": ("created", "green"),
    "new-version": ("new version", "green"),
    "unchanged": ("unchanged", "dim"),
    "restored": ("existing version made latest again", "yellow"),
}


async def apply(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft apply -f FILE...`: store each pipeline file; say whether its version is new."""
    pipelines = [load_pipeline(path) for path in args.file]
    results = [await client.apply(p) for p in pipelines]
    if args.output != "table":
        out.emit_document(
            [{"name": r.pipeline.full_name, "version": r.pipeline.version, "change": r.change} for r in results],
            args.output,
        )
        return 0
    for result in results:
        label, style = _CHANGE_TEXT[result.change]
        out.console.print(
            Text.assemble(
                ("pipeline ", "dim"),
                (result.pipeline.name, "bold"),
                ("  version ", "dim"),
                result.pipeline.version,
                "  ",
                (label, style),
                (f"  ({result.pipeline.version_count} versions)", "dim"),
            )
        )
    return 0


async def pipelines_list(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft pipelines list`."""
    pipelines = [p async for p in client.list_pipelines(filter=args.filter or "")]
    if args.output != "table":
        out.emit_messages([p.pb for p in pipelines], args.output)
    elif not pipelines:
        out.console.print(f"no pipelines in namespace {client.namespace}; store one with `weft apply -f FILE`")
    else:
        out.console.print(out.pipelines_table(pipelines))
    return 0


async def pipelines_get(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft pipelines get NAME [--version V]`: header, parameters and the DAG."""
    pipeline = await client.get_pipeline(args.name, version=args.version)
    if args.output != "table":
        out.emit_messages(pipeline.pb, args.output)
    else:
        out.console.print(out.pipeline_view(pipeline))
    return 0


async def pipelines_versions(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft pipelines versions NAME`."""
    versions: list[PipelineVersion] = [v async for v in client.list_pipeline_versions(args.name)]
    if args.output != "table":
        out.emit_messages([v.pb for v in versions], args.output)
    else:
        head = await client.get_pipeline(args.name)
        out.console.print(out.versions_table(versions, head.version))
    return 0


async def pipelines_delete(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft pipelines delete NAME`."""
    await client.delete_pipeline(args.name)
    out.console.print(f"pipeline {args.name} deleted (its runs are kept)")
    return 0


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    """`-p key=value` pairs; `key=@path` reads the value from a file.

    Raises:
        InvalidArgument: A pair without `=`, an empty key, or an unreadable file.
    """
    parameters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"-p {pair!r}: write parameters as KEY=VALUE (or KEY=@FILE)")
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text(encoding="utf-8")
            except OSError as error:
                raise InvalidArgument(f"-p {key}: cannot read {value[1:]}: {error.strerror}") from None
        parameters[key] = value
    return parameters


async def _finish(run: AsyncRun, args: argparse.Namespace, client: AsyncClient, verb: str) -> int:
    if args.output != "table":
        # Machine-readable output on stdout; the progress of --watch goes to stderr.
        final: RunRecord = await follow_run(client, run.full_name, out.err_console) if args.watch else run
        out.emit_messages(final.pb, args.output)
        return 0 if not args.watch or final.succeeded else 1
    out.console.print(
        Text.assemble(
            (f"run {verb} ", "dim"),
            (run.name, "bold"),
            ("  pipeline ", "dim"),
            run.pipeline,
            "  ",
            out.state_text(run.state),
        )
    )
    if not args.watch:
        out.console.print(Text(f"follow it with: weft runs watch {run.name}", style="dim"))
        return 0
    final = await follow_run(client, run.full_name, out.console)
    return _run_exit_code(final)


def _run_exit_code(run: RunRecord) -> int:
    if run.succeeded:
        out.console.print(Text.assemble(("run ", "dim"), (run.name, "bold"), " ", out.state_text(run.state)))
        return 0
    out.err_console.print(
        Text.assemble(
            ("run ", "dim"),
            (run.name, "bold"),
            " ",
            out.state_text(run.state),
            f": {run.message}" if run.message else "",
        )
    )
    if run.failed_step:
        out.err_console.print(f"see the failed step's output with: weft logs {run.name} {run.failed_step}")
    return 1


async def run(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft run PIPELINE -p k=v... [--watch]`: start a run (and follow it)."""
    created = await client.create_run(
        args.pipeline,
        parse_parameters(args.param),
        cache_mode=args.cache,
        version=args.version,
        run_id=args.run_id,
    )
    return await _finish(created, args, client, "created")


async def runs_list(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft runs list [--pipeline P] [--state S] [--limit N]`."""
    runs: list[AsyncRun] = []
    async for item in client.list_runs(pipeline=args.pipeline, state=args.state or None):
        runs.append(item)
        if args.limit and len(runs) >= args.limit:
            break
    if args.output != "table":
        out.emit_messages([r.pb for r in runs], args.output)
    elif not runs:
        out.console.print("no runs match" if args.pipeline or args.state else "no runs yet; start one with `weft run`")
    else:
        out.console.print(out.runs_table(runs))
    return 0


async def runs_get(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft runs get RUN`."""
    found = await client.get_run(args.run)
    if args.output != "table":
        out.emit_messages(found.pb, args.output)
    else:
        out.console.print(out.run_view(found))
    return 0


async def runs_watch(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft runs watch RUN`: follow until terminal; exit 0 only on SUCCEEDED."""
    final = await follow_run(client, args.run, out.console)
    return _run_exit_code(final)


async def runs_cancel(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft runs cancel RUN`."""
    cancelled = await client.cancel_run(args.run, reason=args.reason or "")
    if args.output != "table":
        out.emit_messages(cancelled.pb, args.output)
    else:
        out.console.print(
            Text.assemble(("run ", "dim"), (cancelled.name, "bold"), " ", out.state_text(cancelled.state))
        )
    return 0


async def runs_resume(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft runs resume RUN [--watch]`: a new run reusing the old run's matching outcomes."""
    resumed = await client.resume_run(args.run, latest_version=args.latest_version, run_id=args.run_id)
    return await _finish(resumed, args, client, f"resuming {args.run.rsplit('/', 1)[-1]} created")


async def logs(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft logs RUN STEP [--attempt N] [-f]`: stdout to stdout, stderr to stderr, raw bytes.

    An attempt that ended without any log (its image could not be pulled, its pod was
    never scheduled, its inputs could not be fetched) prints why on stderr and exits 1.
    """
    written = 0
    async for chunk in client.read_logs(args.run, args.step, attempt=args.attempt, follow=args.follow):
        stream = sys.stderr.buffer if chunk.stream == "stderr" else sys.stdout.buffer
        stream.write(chunk.data)
        stream.flush()
        written += len(chunk.data)
    if written:
        return 0
    attempts = (await client.get_run(args.run)).step(args.step).attempts
    chosen = [a for a in attempts if a.number == args.attempt] if args.attempt else attempts[-1:]
    if (
        chosen
        and chosen[0].state in ("FAILED", "CANCELLED", "LOST")
        and not (chosen[0].pb.stdout_digest or chosen[0].pb.stderr_digest)
    ):
        attempt = chosen[0]
        why = attempt.message or "no reason recorded"
        message = f"attempt {attempt.number} of step {args.step} is {attempt.state} and left no log: {why}"
        out.err_console.print(Text(message, style="red"))
        return 1
    return 0


async def explain(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft explain RUN STEP`: DNA components, decision and reason."""
    explanation = await client.explain_step(args.run, args.step)
    if args.output != "table":
        out.emit_messages(explanation.pb, args.output)
    else:
        out.console.print(out.explanation_view(args.run, args.step, explanation))
    return 0


async def diff(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft diff RUN_A RUN_B`: root causes, input-changed steps, nondeterministic steps."""
    response = await client.diff_runs(args.run_a, args.run_b)
    if args.output != "table":
        out.emit_messages(response, args.output)
    else:
        out.console.print(out.run_diff_view(response, show_same=args.all))
    return 0


async def lineage(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft lineage RUN STEP [--up|--down] [--depth N]`, `--blob DIGEST`, `--outcome DNA`: a tree."""
    if bool(args.run) != bool(args.step):
        raise InvalidArgument("give both RUN and STEP, or --blob DIGEST, or --outcome DNA")
    if not args.run and not (args.blob or args.outcome):
        raise InvalidArgument("say where to start: RUN STEP, --blob DIGEST or --outcome DNA")
    nodes: list[run_pb2.LineageNode] = []
    edges: list[run_pb2.LineageEdge] = []
    token = ""
    while True:  # every page: a tree needs the whole walk
        page = await client.get_lineage(
            args.run or "",
            args.step or "",
            outcome=args.outcome,
            blob=args.blob,
            direction=args.direction or "both",
            depth=args.depth,
            page_size=1000,
            page_token=token,
        )
        nodes.extend(page.nodes)
        edges.extend(page.edges)
        token = page.next_page_token
        if not token:
            break
    whole = run_pb2.Lineage(
        nodes=nodes,
        edges=list({(e.producer, e.consumer, e.input): e for e in edges}.values()),
        blob_producers=page.blob_producers,
        blob_consumers=page.blob_consumers,
        truncated=page.truncated,
    )
    if args.output != "table":
        out.emit_messages(whole, args.output)
    else:
        out.console.print(out.lineage_view(whole, blob=args.blob))
    return 0


async def replay(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft replay RUN [--step S]... [--with-upstream]`: replays the run (or those steps on
    their recorded inputs), waits, and reports divergent steps; exit 1 if any."""
    replayed = await client.replay_run(
        args.run, run_id=args.run_id, steps=args.step or (), with_upstream=args.with_upstream
    )
    out.err_console.print(f"replaying {args.run.rsplit('/', 1)[-1]} as {replayed.name}")
    await replayed.wait(timeout=args.timeout)
    report = await client.diff_runs(args.run, replayed.full_name)
    if args.output != "table":
        out.emit_messages(report, args.output)
    else:
        out.console.print(out.replay_view(report, replayed.state))
    diverged = [d for d in report.steps if d.kind != run_pb2.StepDiff.KIND_SAME]
    return 1 if diverged or replayed.state != "SUCCEEDED" else 0


async def provenance(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft provenance RUN [--step S] [--format slsa|json] [--sign-key K]`; `weft provenance verify FILE --key K`."""
    from weft import _provenance as slsa

    try:
        if args.run == "verify":
            if not args.file or not args.key:
                raise InvalidArgument("usage: weft provenance verify FILE --key PUBLIC.pem")
            statement = slsa.verify_file(Path(args.file), Path(args.key))
            subjects = ", ".join(s["name"] for s in statement.get("subject", []))
            out.console.print(Text(f"verified: signed statement of {subjects}", style="bold green"))
            return 0
        if args.file:
            raise InvalidArgument(f"unexpected argument {args.file!r}: FILE goes with `weft provenance verify`")
        run = (await client.get_run(args.run)).pb
        if args.format == "json":
            records = [s for s in run.steps if not args.step or s.step == args.step]
            if not records:
                raise NotFound(f"run {run.name} has no step {args.step!r}")
            out.emit_messages(records, "json")
            return 0
        for record in run.steps:
            if record.explanation.components_digest and not record.explanation.components:
                # A wide join's DNA components live in a blob; ExplainStep reads them back.
                explained = await client.explain_step(run.name, record.step)
                record.explanation.components.extend(explained.pb.components)
        document = slsa.slsa_statement(run, args.step)
        if args.sign_key:
            document = slsa.sign_with_file(document, Path(args.sign_key))
    except slsa.ProvenanceError as error:
        raise FailedPrecondition(str(error)) from error
    out.emit_document(document, "json")
    return 0


async def outputs(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft outputs RUN [STEP] [--dir D]`: print each output, or save them as D/STEP/OUTPUT."""
    found = await client.get_run(args.run)
    steps = [found.step(args.step)] if args.step else found.steps
    with_outputs = [s for s in steps if s.outputs]
    if args.step and not with_outputs:
        raise NotFound(f"step {args.step} of run {found.name} has no outputs (it is {steps[0].state})")
    if not with_outputs:
        raise NotFound(f"no step of run {found.name} has outputs yet (the run is {found.state})")
    for step in with_outputs:
        for name, digest in sorted(step.outputs.items()):
            if args.dir:
                target = Path(args.dir) / step.name / name
                target.parent.mkdir(parents=True, exist_ok=True)
                size = await client.save_blob(digest, target)
                out.console.print(f"{target}  {size} bytes  {digest}")
                continue
            content = await client.get_blob(digest)
            out.console.rule(Text.assemble((f"{step.name}/{name}", "bold"), (f"  {len(content)} bytes", "dim")))
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                out.console.print(Text(f"(binary content {digest}; save it with --dir DIR)", style="dim"))
                continue
            lines = text.rstrip("\n").split("\n")
            if not args.full and len(lines) > _PREVIEW_LINES:
                shown = "\n".join(lines[:_PREVIEW_LINES])
                more = f"... {len(lines) - _PREVIEW_LINES} more lines: add --full, or save it with --dir DIR"
                # Printed as plain text so rich markup in the data cannot change it.
                out.console.print(Text(shown))
                out.console.print(Text(more, style="dim"))
            else:
                out.console.print(Text("\n".join(lines)))
    return 0
