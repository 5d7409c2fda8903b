"""The `weft` command line: a local stack (`weft up`), pipelines, runs, logs, explanations, outputs.

    weft up                                   start etcd + weft-tracer + weft-api + weft-executor here
    weft apply -f pipeline.yaml               store a pipeline (a new version if it changed)
    weft pipelines list|get|versions|delete
    weft run PIPELINE -p k=v --watch          start a run and follow it
    weft runs list|get|watch|cancel|resume
    weft logs RUN STEP [-f]                   an attempt's output
    weft explain RUN STEP                     why a step was (not) reused
    weft diff RUN_A RUN_B                     which steps differ between two runs, and why
    weft lineage RUN STEP [--up|--down]       what an output was built from / what consumed it
    weft replay RUN                           run it again, cache off, and name nondeterministic steps
    weft replay RUN --step S [--with-upstream] replay one step on its recorded inputs
    weft provenance RUN [--sign-key K]        SLSA provenance (in-toto Statement v1, DSSE-signed)
    weft provenance verify FILE --key K       check a signed statement
    weft outputs RUN [STEP] [--dir D]         what the steps produced
    weft gc [--dry-run]                       delete blobs nothing references (runs weft-gc)
    weft trace RUN [--follow] [--html FILE]   the run's timeline (Gantt) in the terminal or a page
    weft events RUN [--replay --speed N]      the forensic timeline, from weft-tracer

Global options (before or after the command): `-s/--server` (env WEFT_SERVER, default
127.0.0.1:50051), `-n/--namespace` (env WEFT_NAMESPACE, default "default"), `-o
table|json|yaml`, `--token` (env WEFT_TOKEN), `--ca-cert` (env WEFT_CA_CERT) and `--tls`
(env WEFT_TLS) for a secured weft-api; WEFT_RETRY_SECONDS (default 5) bounds how long an unreachable server
is retried. Exit codes: 0 success, 1 failure (an API error, a run that did not
succeed), 2 bad usage, 130 interrupted. API errors are printed as one message, never a
traceback. The CLI is a client of the SDK only: it never reads etcd or imports server code
(`weft gc` runs the server-side `weft-gc` program, which does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence

from rich.text import Text

from weft._client import DEFAULT_TARGET, DEFAULT_TRACER_TARGET, AsyncClient, RetrySettings
from weft.errors import InvalidArgument, Unavailable, WeftError

__all__ = ["main"]

Command = Callable[[argparse.Namespace, AsyncClient], Awaitable[int]]

# The CLI is interactive: give up on an unreachable server after seconds, not half a minute.
_DEFAULT_RETRY_SECONDS = 5.0


def _retry_settings() -> RetrySettings:
    raw = os.environ.get("WEFT_RETRY_SECONDS", "")
    try:
        deadline = float(raw) if raw else _DEFAULT_RETRY_SECONDS
    except ValueError:
        raise InvalidArgument(f"WEFT_RETRY_SECONDS={raw!r} is not a number of seconds") from None
    return RetrySettings(deadline=deadline, call_timeout=30.0)


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    # Defined on the top parser (with defaults) and on every subcommand (without, so a
    # value given before the command is not reset by the subcommand's parser). The help
    # names the effective default itself: on a subcommand the argparse default is
    # SUPPRESS, which `%(default)s` cannot format.
    parser = argparse.ArgumentParser(add_help=False)
    server = os.environ.get("WEFT_SERVER", DEFAULT_TARGET)
    namespace = os.environ.get("WEFT_NAMESPACE", "default")
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "-s",
        "--server",
        default=server if defaults else suppress,
        help=f"weft-api host:port (env WEFT_SERVER; default {_help_literal(server)})",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=namespace if defaults else suppress,
        help=f"namespace (env WEFT_NAMESPACE; default {_help_literal(namespace)})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WEFT_TOKEN", "") if defaults else suppress,
        help="bearer token for a weft-api with authentication on (env WEFT_TOKEN, which keeps it out of `ps`)",
    )
    parser.add_argument(
        "--ca-cert",
        default=os.environ.get("WEFT_CA_CERT") or None if defaults else suppress,
        help="PEM file of the CA of weft-api's certificate; implies --tls (env WEFT_CA_CERT)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("WEFT_TLS", "") not in ("", "0", "false") if defaults else suppress,
        help="talk TLS to weft-api, trusting the system's CAs unless --ca-cert (env WEFT_TLS=1)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table" if defaults else suppress,
        help="output format (default table)",
    )
    return parser


def _help_literal(value: str) -> str:
    # argparse %-formats every help string; a '%' in an environment value must stay literal.
    return value.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `weft` (exposed for tests and documentation)."""
    from weft.cli import _commands as c

    common = _common_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="weft",
        description="weft: data pipelines that never forget the work they have done.",
        parents=[_common_options(defaults=True)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Command | None, help: str
    ) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    up = commands.add_parser(
        "up",
        help="run a local stack (etcd, weft-api, weft-executor) in the foreground",
        description="Start etcd, weft-api and weft-executor (local runtime) here, with data and logs under "
        "--state-dir, and keep them running until Ctrl-C or SIGTERM, which stops them all.",
    )
    up.add_argument("--state-dir", default=".weft", help="where data and logs go (default %(default)s)")
    up.add_argument("--port", type=int, default=50051, help="weft-api port on 127.0.0.1; 0 picks one")
    up.add_argument("--executors", type=int, default=1, help="how many weft-executors (default %(default)s)")
    up.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="attempts per executor at once (default: the executor's, 4 per CPU, at least 8)",
    )
    up.add_argument("--no-executor", action="store_true", help="start no executor (runs stay PENDING)")
    up.add_argument(
        "--secure",
        action="store_true",
        help="TLS everywhere and token auth: a local CA, certificates and an admin token under STATE_DIR/secure",
    )
    up.add_argument(
        "--blob-store",
        default="",
        metavar="URL",
        help="artifact store: s3://BUCKET/PREFIX, gs://..., az://... (credentials from the environment, "
        "e.g. AWS_ACCESS_KEY_ID and AWS_ENDPOINT_URL); default: blobs/ in the state dir",
    )
    up.add_argument(
        "--tracer-port",
        type=int,
        default=None,
        help="weft-tracer port on 127.0.0.1 (OTLP and TraceService); default: the api port + 1, 0 picks one",
    )
    up.add_argument("--no-tracer", action="store_true", help="start no weft-tracer (runs are not traced)")
    up.add_argument(
        "--jaeger",
        metavar="HOST:PORT",
        default=os.environ.get("WEFT_JAEGER", ""),
        help="forward every span to this OTLP/gRPC endpoint, e.g. Jaeger's 127.0.0.1:4317 (env WEFT_JAEGER; "
        "without either, OTEL_EXPORTER_OTLP_ENDPOINT if set)",
    )
    up.set_defaults(handler=None, up=True)

    gc = commands.add_parser(
        "gc",
        help="delete blobs nothing references (runs weft-gc against etcd and the artifact store)",
        description="Delete blobs that no pipeline version, run, outcome or log references and that were not "
        "written or used for --min-age seconds. Talks to etcd and the artifact store directly (as weft-api "
        "does), with the same WEFT_ETCD_ENDPOINTS, WEFT_ETCD_ROOT, WEFT_BLOB_STORE and WEFT_BLOB_DIR.",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted, and how many bytes")
    gc.add_argument("--etcd-endpoints", help="etcd client URLs (env WEFT_ETCD_ENDPOINTS)")
    gc.add_argument("--etcd-root", help="root of weft's keys in etcd (env WEFT_ETCD_ROOT; default /weft)")
    gc.add_argument("--blob-store", metavar="URL", help="artifact store URL (env WEFT_BLOB_STORE)")
    gc.add_argument("--blob-dir", metavar="DIR", help="artifact store directory (env WEFT_BLOB_DIR)")
    gc.add_argument("--min-age", type=float, help="seconds an unreferenced blob is kept (default one day; >= 3600)")
    gc.set_defaults(handler=None, gc=True)

    apply = command(commands, "apply", c.apply, "store pipelines from files (a new version when a spec changed)")
    apply.add_argument("-f", "--file", action="append", required=True, help="pipeline file (YAML/JSON); repeatable")

    pipelines = commands.add_parser("pipelines", help="list, show and delete pipelines")
    pipeline_commands = pipelines.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    listing = command(pipeline_commands, "list", c.pipelines_list, "list pipelines at their latest version")
    listing.add_argument("--filter", help="`label.KEY=VALUE ...` or `name=PREFIX*`")
    get = command(pipeline_commands, "get", c.pipelines_get, "show a pipeline version and its DAG")
    get.add_argument("name")
    get.add_argument("--version", help="a version digest or unique hex prefix (default: latest)")
    versions = command(pipeline_commands, "versions", c.pipelines_versions, "list a pipeline's versions")
    versions.add_argument("name")
    delete = command(pipeline_commands, "delete", c.pipelines_delete, "delete a pipeline (its runs are kept)")
    delete.add_argument("name")

    run = command(commands, "run", c.run, "start a run of a pipeline")
    run.add_argument("pipeline")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="parameter; repeatable")
    run.add_argument("--watch", "-w", action="store_true", help="follow the run; exit 0 only if it succeeds")
    run.add_argument("--cache", choices=("use", "refresh", "off"), default="use", help="outcome reuse (default use)")
    run.add_argument("--version", help="pipeline version digest or prefix (default: latest)")
    run.add_argument("--run-id", help="the run's id (default: generated)")

    runs = commands.add_parser("runs", help="list, show, follow, cancel and resume runs")
    run_commands = runs.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    runs_list = command(run_commands, "list", c.runs_list, "list runs, newest first")
    runs_list.add_argument("--pipeline", help="only runs of this pipeline")
    runs_list.add_argument("--state", action="append", help="only runs in this state (repeatable)")
    runs_list.add_argument("--limit", type=int, default=50, help="at most this many (0: all; default %(default)s)")
    runs_get = command(run_commands, "get", c.runs_get, "show a run and its steps")
    runs_get.add_argument("run")
    runs_watch = command(run_commands, "watch", c.runs_watch, "follow a run until it ends")
    runs_watch.add_argument("run")
    runs_cancel = command(run_commands, "cancel", c.runs_cancel, "stop a run")
    runs_cancel.add_argument("run")
    runs_cancel.add_argument("--reason", help="why (recorded on the run)")
    resume = command(run_commands, "resume", c.runs_resume, "start a run that reuses a run's matching outcomes")
    resume.add_argument("run")
    resume.add_argument("--watch", "-w", action="store_true", help="follow the new run")
    resume.add_argument("--latest-version", action="store_true", help="run the pipeline's latest version")
    resume.add_argument("--run-id", help="the new run's id (default: generated)")

    logs = command(commands, "logs", c.logs, "print a step attempt's stdout and stderr")
    logs.add_argument("run")
    logs.add_argument("step")
    logs.add_argument("--attempt", type=int, default=0, help="attempt number (default: the latest)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing while the attempt runs")

    explain = command(commands, "explain", c.explain, "show a step's DNA and why it was (not) reused")
    explain.add_argument("run")
    explain.add_argument("step")

    diff = command(commands, "diff", c.diff, "compare two runs step by step by DNA: root causes first")
    diff.add_argument("run_a", help="the first (earlier) run")
    diff.add_argument("run_b", help="the second (later) run")
    diff.add_argument("--all", action="store_true", help="also list the steps that are the same")

    lineage = command(commands, "lineage", c.lineage, "draw what a step's outcome (or a blob) came from and fed")
    lineage.add_argument("run", nargs="?", help="the run (with STEP)")
    lineage.add_argument("step", nargs="?", help="the step whose outcome to start from")
    lineage.add_argument("--blob", default="", help="start from the outcomes that produced or consumed this digest")
    lineage.add_argument("--outcome", default="", help="start from the outcome with this DNA")
    way = lineage.add_mutually_exclusive_group()
    way.add_argument("--up", action="store_const", const="up", dest="direction", help="only what it was built from")
    way.add_argument("--down", action="store_const", const="down", dest="direction", help="only what consumed it")
    lineage.add_argument("--depth", type=int, default=3, help="edges to walk (default %(default)s, at most 20)")

    replay = command(
        commands,
        "replay",
        c.replay,
        "run a finished run again (same version and parameters, cache off) and report the steps whose outputs diverged",
    )
    replay.add_argument("run")
    replay.add_argument("--run-id", help="the replay's id (default: generated)")
    replay.add_argument(
        "--step",
        action="append",
        metavar="STEP",
        help="replay only this step (repeatable) on its recorded inputs: its upstream steps are resumed "
        "from RUN, its downstream steps are left out",
    )
    replay.add_argument(
        "--with-upstream", action="store_true", help="with --step: replay its upstream steps too (cache off)"
    )
    replay.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for the replay (default: no limit)"
    )

    provenance = command(
        commands,
        "provenance",
        c.provenance,
        "export a run's provenance as an in-toto Statement with a SLSA Provenance v1 predicate, or verify one "
        "(`weft provenance verify FILE --key PUBLIC.pem`)",
    )
    provenance.add_argument("run", metavar="RUN|verify", help="the run to export, or `verify`")
    provenance.add_argument("file", nargs="?", help="with verify: the signed statement (DSSE envelope) to check")
    provenance.add_argument("--step", help="only this step's outcome")
    provenance.add_argument(
        "--format", choices=["slsa", "json"], default="slsa", help="slsa (default) or weft's own step records"
    )
    provenance.add_argument("--sign-key", help="sign with this ed25519 private key (PEM): a DSSE envelope")
    provenance.add_argument("--key", help="with verify: the signer's ed25519 public key (PEM)")

    outputs = command(commands, "outputs", c.outputs, "print (or save) the outputs of a run's steps")
    outputs.add_argument("run")
    outputs.add_argument("step", nargs="?")
    outputs.add_argument("--dir", help="save each output as DIR/STEP/OUTPUT instead of printing")
    outputs.add_argument("--full", action="store_true", help="print long outputs whole (default: first 40 lines)")

    from weft.cli import _trace as t

    tracer_help = f"weft-tracer host:port (env WEFT_TRACER; default {DEFAULT_TRACER_TARGET})"
    trace = command(commands, "trace", t.trace, "draw a run's timeline: steps and attempts on a time axis")
    trace.add_argument("run")
    trace.add_argument("--follow", "-f", action="store_true", help="redraw until the run ends")
    trace.add_argument("--html", metavar="FILE", help="write one self-contained page (timeline, DAG, step details)")
    trace.add_argument("--tracer", default=os.environ.get("WEFT_TRACER", DEFAULT_TRACER_TARGET), help=tracer_help)
    events = command(commands, "events", t.events, "list a run's forensic timeline (or replay it)")
    events.add_argument("run")
    events.add_argument("--step", help="only this step's events (and the run's own)")
    events.add_argument("--replay", action="store_true", help="play the events back with their recorded timing")
    events.add_argument("--speed", type=float, default=None, help="replay this many times faster (default 1)")
    events.add_argument("--tracer", default=os.environ.get("WEFT_TRACER", DEFAULT_TRACER_TARGET), help=tracer_help)
    return parser


def _gc(args: argparse.Namespace) -> int:
    """`weft gc`: the sweep needs etcd and the store, so it runs the server-side `weft-gc`."""
    from weft.cli import _output as out
    from weft.localstack import find_service

    command = find_service("weft-gc")
    if command is None:
        out.err_console.print(Text("error: weft-gc is not installed: pip install -e services/api", style="red"))
        return 1
    argv = [command, *(["--dry-run"] if args.dry_run else [])]
    for flag in ("etcd_endpoints", "etcd_root", "blob_store", "blob_dir", "min_age"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), f"{value:g}" if isinstance(value, float) else value]
    return subprocess.run(argv, check=False).returncode


async def _run_command(handler: Command, args: argparse.Namespace) -> int:
    async with await AsyncClient.connect(
        args.server,
        namespace=args.namespace,
        retry=_retry_settings(),
        token=args.token,
        tls=args.tls,
        ca_cert=args.ca_cert,
    ) as client:
        return await handler(args, client)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `weft` console script; returns the exit code.

    Args:
        argv: Arguments without the program name; None reads sys.argv.
    """
    from weft.cli import _output as out

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "up", False):
            from weft.cli._up import up

            return up(args)
        if getattr(args, "gc", False):
            return _gc(args)
        handler: Command = args.handler
        return asyncio.run(_run_command(handler, args))
    except Unavailable as error:
        out.err_console.print(
            Text(
                f"error: cannot reach weft-api at {args.server}: {error.message}\n"
                "start a local stack with `weft up`, or point -s/--server (env WEFT_SERVER) at one",
                style="red",
            )
        )
        return 1
    except WeftError as error:
        out.err_console.print(Text(f"error: {error.message}", style="red"))
        return 1
    except KeyboardInterrupt:
        out.err_console.print(Text("interrupted", style="yellow"))
        return 130
    except BrokenPipeError:
        # `weft ... | head`: the reader left; not an error worth a traceback.
        return 0


if __name__ == "__main__":
    sys.exit(main())
