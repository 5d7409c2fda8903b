"""How the `weft` CLI shows things: state colours, durations, tables, the DAG drawing, -o json|yaml.

Everything printed by the CLI goes through these functions so that the same state looks
the same everywhere. They only format what they are given; they never call the API.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from weft._results import Explanation, PipelineVersion, RunRecord, StepRun
from weft.v1 import pipeline_pb2, run_pb2


def _width(stream: Any) -> int | None:
    # Piped output (CI logs, tests, `| grep`) gets wide lines instead of rich's 80 columns,
    # so tables are not squeezed and messages are not wrapped mid-sentence.
    is_tty = getattr(stream, "isatty", lambda: False)()
    return None if is_tty or "COLUMNS" in os.environ else 200


#: stdout, with colours when it is a terminal (and NO_COLOR unset).
console = Console(highlight=False, width=_width(sys.stdout))
#: stderr, for errors and warnings; messages are never wrapped.
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))

STATE_STYLES = {
    "PENDING": "grey50",
    "WAITING": "grey50",
    "READY": "cyan",
    "RUNNING": "bold blue",
    "SUCCEEDED": "green",
    "CACHED": "bold magenta",
    "FAILED": "bold red",
    "SKIPPED": "yellow",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
    "LOST": "red",
}

OUTPUT_FORMATS = ("table", "json", "yaml")


def state_text(state: str) -> Text:
    """A state name in its colour."""
    return Text(state, style=STATE_STYLES.get(state, ""))


def duration_text(seconds: float | None) -> str:
    """`0.4s`, `12.3s`, `3m04s`, `1h02m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def time_text(moment: datetime | None) -> str:
    """Local wall-clock time with how long ago, e.g. `14:03:07 (5m ago)`; `-` when unset."""
    if moment is None:
        return "-"
    ago = (datetime.now(UTC) - moment).total_seconds()
    local = moment.astimezone()
    stamp = local.strftime("%H:%M:%S") if ago < 86400 else local.strftime("%Y-%m-%d %H:%M")
    return f"{stamp} ({duration_text(max(ago, 0))} ago)"


def short_digest(digest: str, length: int = 12) -> str:
    """The first hex digits of a `sha256:` digest."""
    return digest.removeprefix("sha256:")[:length]


def emit_messages(messages: Sequence[Message] | Message, output: str) -> None:
    """Prints messages as JSON or YAML (proto-JSON field names); one message or a list."""
    if isinstance(messages, Message):
        document: Any = json_format.MessageToDict(messages)
    else:
        document = [json_format.MessageToDict(m) for m in messages]
    emit_document(document, output)


def emit_document(document: Any, output: str) -> None:
    """Prints a plain document as JSON or YAML."""
    if output == "json":
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    sys.stdout.flush()


# Pipelines ----------------------------------------------------------------------------------


def pipelines_table(pipelines: Iterable[PipelineVersion]) -> Table:
    """One row per pipeline at its latest version."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "VERSION", "VERSIONS", "UPDATED", "DESCRIPTION"):
        table.add_column(column)
    for p in pipelines:
        table.add_row(
            p.name, short_digest(p.version), str(p.version_count), time_text(p.version_create_time), p.description
        )
    return table


def versions_table(versions: Iterable[PipelineVersion], latest: str) -> Table:
    """One row per version, newest first; `latest` (the head's digest) is marked."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("VERSION", "STORED", ""):
        table.add_column(column)
    for v in versions:
        # The newest version is not always the latest: applying an older spec again makes it the head.
        table.add_row(
            v.version, time_text(v.version_create_time), Text("latest", style="bold") if v.version == latest else ""
        )
    return table


def upstream_of(step: pipeline_pb2.Step) -> list[str]:
    """Steps this step waits for: producers of its inputs, then `depends_on`, without repeats."""
    upstream: list[str] = []
    for item in step.inputs:
        if item.WhichOneof("source") == "step_output" and item.step_output.step not in upstream:
            upstream.append(item.step_output.step)
    for name in step.depends_on:
        if name not in upstream:
            upstream.append(name)
    return upstream


def dag_layers(spec: pipeline_pb2.PipelineSpec) -> list[list[pipeline_pb2.Step]]:
    """Steps grouped by depth: layer 0 has no upstream; each later step sits one below its deepest upstream."""
    by_name = {s.name: s for s in spec.steps}
    depth: dict[str, int] = {}

    def depth_of(name: str, visiting: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        if name in visiting or name not in by_name:
            # A cycle or a dangling reference: the server rejects both; draw it flat.
            return 0
        ups = upstream_of(by_name[name])
        value = 1 + max((depth_of(u, visiting | {name}) for u in ups), default=-1)
        depth[name] = value
        return value

    layers: list[list[pipeline_pb2.Step]] = []
    for step in spec.steps:
        d = depth_of(step.name, frozenset())
        while len(layers) <= d:
            layers.append([])
        layers[d].append(step)
    return layers


def _function_text(manifest: str) -> str:
    try:
        name = json.loads(manifest).get("name", "?")
    except (ValueError, AttributeError):
        name = "?"
    return f"python function {name}()"


#: The literal inputs of a `@weft.function` step, shown as what they mean rather than their bytes.
FUNCTION_INPUTS: dict[str, Callable[[str], str]] = {
    "weft.function.json": _function_text,
    "weft.runner": lambda _: "(weft function runner)",
}


def _input_text(item: pipeline_pb2.Input) -> str:
    source = item.WhichOneof("source")
    if source == "step_output":
        return f"{item.name} ← {item.step_output.step}.{item.step_output.output}"
    if source == "parameter":
        return f"{item.name} ← param {item.parameter}"
    if source == "literal" and item.name in FUNCTION_INPUTS:
        return FUNCTION_INPUTS[item.name](item.literal)
    if source == "literal":
        value = item.literal if len(item.literal) <= 20 else item.literal[:17] + "..."
        return f"{item.name} = {value!r}"
    return item.name


def pipeline_view(p: PipelineVersion) -> RenderableType:
    """The header of a pipeline version, its parameters, and its DAG drawn layer by layer."""
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("Pipeline", p.full_name)
    header.add_row("Version", p.version)
    header.add_row("Versions", str(p.version_count))
    header.add_row("Stored", time_text(p.version_create_time))
    if p.description:
        header.add_row("Description", p.description)
    if p.labels:
        header.add_row("Labels", ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())))
    for prefix, used, version in p.uses:
        # The composition: the steps `prefix.*` were expanded from this pipeline version.
        header.add_row("Uses", f"{used} @ {version} as {prefix}.*")
    parts: list[RenderableType] = [header, Text("")]
    if p.pb.spec.parameters:
        params = Table(title="Parameters", title_justify="left", box=None, header_style="bold", pad_edge=False)
        for column in ("NAME", "DEFAULT", "DESCRIPTION"):
            params.add_column(column)
        for param in p.pb.spec.parameters:
            default = param.default_value if param.HasField("default_value") else Text("(required)", style="yellow")
            params.add_row(param.name, default, param.description)
        parts += [params, Text("")]
    parts.append(dag_view(p.pb.spec))
    return Group(*parts)


def dag_view(spec: pipeline_pb2.PipelineSpec) -> RenderableType:
    """The DAG as layers: every step under the layer of its deepest upstream, with what feeds it."""
    layers = dag_layers(spec)
    table = Table(
        title=f"DAG: {len(spec.steps)} steps in {len(layers)} layers",
        title_justify="left",
        box=None,
        header_style="bold",
        pad_edge=False,
    )
    for column in ("LAYER", "STEP", "AFTER", "INPUTS", "OUTPUTS", "IMAGE"):
        table.add_column(column)
    for index, layer in enumerate(layers):
        for position, step in enumerate(layer):
            table.add_row(
                ("│ " if index else "● ") + str(index + 1) if position == 0 else "│",
                Text(step.name, style="bold"),
                ", ".join(upstream_of(step)) or "-",
                "\n".join(_input_text(i) for i in step.inputs) or "-",
                ", ".join(o.name for o in step.outputs) or "-",
                step.container.image,
            )
    return table


# Runs ---------------------------------------------------------------------------------------


def step_counts_text(counts: dict[str, int]) -> Text:
    """`3 SUCCEEDED 1 RUNNING`, each in its colour."""
    text = Text()
    for state, count in sorted(counts.items()):
        if count:
            if text:
                text.append(" ")
            text.append(f"{count} ", style="bold")
            text.append(state, style=STATE_STYLES.get(state, ""))
    return text or Text("-")


def runs_table(runs: Iterable[RunRecord]) -> Table:
    """One row per run."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("RUN", "PIPELINE", "VERSION", "STATE", "STEPS", "CREATED", "DURATION"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.name,
            run.pipeline,
            short_digest(run.pipeline_version),
            state_text(run.state),
            step_counts_text(run.step_counts),
            time_text(run.create_time),
            duration_text(run.duration),
        )
    return table


#: The runtimes' wording before the log lines they quote in a failure message.
_LOG_TAIL_SUFFIX = re.compile(r"; last (?:stderr|log) lines:$")


def step_detail(step: StepRun) -> str:
    """The most useful short fact about a step: its failure, where a cached outcome came from..."""
    if step.message:
        first, _, rest = step.message.partition("\n")
        # "exit code 3; last log lines:\n..." would end at the colon: show the last line instead.
        head = _LOG_TAIL_SUFFIX.sub("", first)
        lines = [line for line in rest.splitlines() if line.strip()]
        if head != first and lines:
            return f"{head}: {lines[-1].strip()}"[:120]
        return head[:120]
    if step.state == "CACHED":
        origin = step.reused_from_run.rsplit("/", 1)[-1]
        return f"outcome of run {origin}" if origin else "outcome reused"
    if step.state == "RUNNING" and step.executor:
        return f"on {step.executor}"
    return ""


def steps_table(steps: Iterable[StepRun]) -> Table:
    """One row per step: state, attempts, duration and a detail."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("STEP", "STATE", "ATTEMPTS", "DURATION", "DNA", "DETAIL"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            step.name,
            state_text(step.state),
            str(len(step.pb.attempts)) if step.pb.attempts else "-",
            duration_text(step.duration),
            short_digest(step.dna, 10) if step.dna else "-",
            step_detail(step),
        )
    return table


def run_header(run: RunRecord) -> Table:
    """The run's identity and state as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Run", run.full_name)
    grid.add_row("Pipeline", f"{run.pipeline} @ {short_digest(run.pipeline_version)}")
    grid.add_row("State", state_text(run.state))
    if run.parameters:
        grid.add_row("Parameters", ", ".join(f"{k}={v}" for k, v in sorted(run.parameters.items())))
    if run.cache_mode != "USE":
        grid.add_row("Cache", run.cache_mode)
    grid.add_row("Created", time_text(run.create_time))
    grid.add_row("Duration", duration_text(run.duration))
    if run.resumed_from:
        grid.add_row("Resumes", run.resumed_from)
    if run.message:
        grid.add_row("Message", Text(run.message, style="red" if run.state == "FAILED" else ""))
    if run.failed_step:
        grid.add_row("Failed step", run.failed_step)
    return grid


def run_view(run: RunRecord) -> RenderableType:
    """The run's header and its steps."""
    return Group(run_header(run), Text(""), steps_table(run.steps))


def explanation_view(run: str, step: str, explanation: Explanation) -> RenderableType:
    """A step's DNA components, the decision and the reason."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Run", run)
    grid.add_row("Step", step)
    grid.add_row("DNA", explanation.dna or "(not computed yet)")
    decision_style = {"HIT": "bold magenta", "RESUMED": "bold magenta", "MISS": "bold blue"}
    grid.add_row("Decision", Text(explanation.decision, style=decision_style.get(explanation.decision, "")))
    grid.add_row("Reason", explanation.reason or "-")
    outcome = explanation.outcome
    if outcome is not None:
        grid.add_row("Outcome", f"run {outcome.run.rsplit('/', 1)[-1]} step {outcome.step} attempt {outcome.attempt}")
    changes = explanation.pb.changes
    if explanation.pb.compared_run:
        grid.add_row("Compared with", f"run {explanation.pb.compared_run.rsplit('/', 1)[-1]} step {step}")
    table = Table(title="DNA components (in hashing order)", title_justify="left", box=None, header_style="bold")
    table.add_column("COMPONENT")
    table.add_column("VALUE", overflow="fold")
    for name, value in explanation.components:
        table.add_row(name, value)
    if not changes:
        return Group(grid, Text(""), table)
    return Group(grid, Text(""), component_changes_view(changes, "What changed (old → new)"), Text(""), table)


#: Longest component value shown in a changes table (the -o json output has it whole).
SHOWN_VALUE_CHARS = 48


def shorten(value: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    """`value` cut to `limit` characters with an ellipsis in the middle."""
    if len(value) <= limit:
        return value
    keep = (limit - 1) // 2
    return value[:keep] + "…" + value[len(value) - (limit - 1 - keep) :]


def component_changes_view(changes: Iterable[run_pb2.ComponentChange], title: str) -> Table:
    """A table of changed DNA components: name, old and new value (shortened), cause.

    Values come from the DNA, where a secret is only its reference (`secret:NAME/KEY`).
    """
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    table.add_column("COMPONENT")
    table.add_column("OLD", overflow="fold")
    table.add_column("NEW", overflow="fold")
    table.add_column("WHY", overflow="fold")
    for change in changes:
        table.add_row(
            change.name,
            Text(shorten(change.old_value) or "(none)", style="red"),
            Text(shorten(change.new_value) or "(none)", style="green"),
            change.cause or "-",
        )
    return table


_DIFF_TITLES = {
    run_pb2.StepDiff.KIND_ROOT_CAUSE: ("Root causes (the step itself changed)", "bold red"),
    run_pb2.StepDiff.KIND_INPUT_CHANGED: ("Changed only through an input", "yellow"),
    run_pb2.StepDiff.KIND_NONDETERMINISTIC: ("Nondeterministic (same DNA, different outputs)", "bold magenta"),
    run_pb2.StepDiff.KIND_ADDED: ("Added (only in run B)", "green"),
    run_pb2.StepDiff.KIND_REMOVED: ("Removed (only in run A)", "red"),
    run_pb2.StepDiff.KIND_INCOMPARABLE: ("Not comparable (no committed outcome in one run)", "dim"),
    run_pb2.StepDiff.KIND_SAME: ("Same DNA and outputs", "dim"),
}


def run_diff_view(response: run_pb2.DiffRunsResponse, *, show_same: bool = False) -> RenderableType:
    """DiffRuns as sections: root causes first, each step with what changed and why."""
    a, b = response.run_a.rsplit("/", 1)[-1], response.run_b.rsplit("/", 1)[-1]
    parts: list[RenderableType] = [Text.assemble(("A ", "bold"), a, ("  B ", "bold"), b)]
    same = sum(1 for d in response.steps if d.kind == run_pb2.StepDiff.KIND_SAME)
    for kind, (title, style) in _DIFF_TITLES.items():
        diffs = [d for d in response.steps if d.kind == kind]
        if not diffs or (kind == run_pb2.StepDiff.KIND_SAME and not show_same):
            continue
        table = Table(title=Text(title, style=style), title_justify="left", box=None, header_style="bold")
        table.add_column("STEP")
        table.add_column("OUTPUTS")
        table.add_column("WHAT CHANGED", overflow="fold")
        for d in diffs:
            lines = [
                f"{c.name}: {shorten(c.old_value) or '(none)'} → {shorten(c.new_value) or '(none)'}" for c in d.changes
            ]
            if d.caused_by:
                lines.append("caused by " + ", ".join(d.caused_by))
            if not d.changes:
                lines.append(d.message or "-")
            table.add_row(d.step, "differ" if d.outputs_differ else "same", "\n".join(lines))
        parts += [Text(""), table]
    if same and not show_same:
        parts += [Text(""), Text(f"{same} step(s) have the same DNA and outputs (--all lists them)", style="dim")]
    if all(d.kind == run_pb2.StepDiff.KIND_SAME for d in response.steps):
        parts += [Text("The runs do not differ.", style="bold")]
    return Group(*parts)


def _short_digest(digest: str) -> str:
    return digest[: len("sha256:") + 12] if digest else "-"


def _lineage_label(node: run_pb2.LineageNode) -> Text:
    label = Text.assemble((node.step or "(unknown outcome)", "bold"))
    if node.run:
        label.append(f"  run {node.run.rsplit('/', 1)[-1]}", style="cyan")
    label.append(f"  {_short_digest(node.dna)}", style="dim")
    if node.unindexed:
        # Found without its lineage index: its consumers may not all be shown until swept.
        label.append("  (not indexed yet)", style="yellow")
    outputs = ", ".join(f"{name}={_short_digest(d)}" for name, d in sorted(node.outputs.items()))
    if outputs:
        label.append(f"  → {outputs}")
    # Parameters and literals: the inputs no outcome produced.
    given = [f"{k}={_short_digest(v)}" for k, v in sorted(node.inputs.items()) if k not in node.input_outcomes]
    if given:
        label.append(f"  (given {', '.join(given)})", style="dim")
    return label


def lineage_view(lineage: run_pb2.Lineage, *, blob: str = "") -> RenderableType:
    """A lineage walk as trees: each start, what it was built from, and what consumed it.

    A node reached twice (a diamond) is drawn once; later mentions say so.
    """
    nodes = {n.dna: n for n in lineage.nodes}
    producers: dict[str, list[run_pb2.LineageEdge]] = {}
    consumers: dict[str, list[run_pb2.LineageEdge]] = {}
    for edge in lineage.edges:
        producers.setdefault(edge.consumer, []).append(edge)
        consumers.setdefault(edge.producer, []).append(edge)

    def grow(tree: Tree, dna: str, upstream: bool, shown: set[str]) -> None:
        edges = producers.get(dna, []) if upstream else consumers.get(dna, [])
        for edge in sorted(edges, key=lambda e: e.input):
            other = edge.producer if upstream else edge.consumer
            node = nodes.get(other)
            if node is None or (node.distance >= 0 if upstream else node.distance <= 0):
                continue
            label = Text(f"{edge.input}: ", style="dim") + _lineage_label(node)
            if other in shown:
                tree.add(label + Text("  (shown above)", style="dim"))
                continue
            shown.add(other)
            grow(tree.add(label), other, upstream, shown)

    parts: list[RenderableType] = []
    if blob:
        parts.append(Text.assemble(("blob ", "bold"), blob))
        if not lineage.blob_producers:
            parts.append(Text("  produced by no outcome (a parameter, a literal, or an upload)", style="dim"))
    for start in (n for n in lineage.nodes if n.distance == 0):
        root = Tree(_lineage_label(start))
        ups = Tree(Text("built from", style="bold yellow"))
        grow(ups, start.dna, True, set())
        if ups.children:
            root.children.append(ups)
        downs = Tree(Text("consumed by", style="bold green"))
        grow(downs, start.dna, False, set())
        if downs.children:
            root.children.append(downs)
        parts.append(root)
    if blob and not lineage.blob_producers:
        consumed = Tree(Text("consumed by", style="bold green"))
        for dna in lineage.blob_consumers:
            node = nodes.get(dna)
            if node is not None:
                grow(consumed.add(_lineage_label(node)), dna, False, {dna})
        parts.append(consumed)
    if lineage.truncated:
        parts.append(Text("(the walk stopped at its node limit; use a smaller --depth)", style="yellow"))
    if not parts:
        parts.append(Text("no outcome found", style="dim"))
    return Group(*parts)


def replay_view(report: run_pb2.DiffRunsResponse, replay_state: str) -> RenderableType:
    """A replay's report: identical, or the first divergent (nondeterministic) steps and the rest."""
    original, replay = report.run_a.rsplit("/", 1)[-1], report.run_b.rsplit("/", 1)[-1]
    first = [d for d in report.steps if d.kind == run_pb2.StepDiff.KIND_NONDETERMINISTIC]
    parts: list[RenderableType] = [Text.assemble(("replay ", "bold"), replay, " of ", original, f"  {replay_state}")]
    if all(d.kind == run_pb2.StepDiff.KIND_SAME for d in report.steps):
        parts.append(Text("identical: every step produced the same outputs", style="bold green"))
        return Group(*parts)
    if first:
        table = Table(
            title=Text(
                "First divergent steps (same inputs, different outputs: nondeterministic)", style="bold magenta"
            ),
            title_justify="left",
            box=None,
            header_style="bold",
        )
        table.add_column("STEP")
        table.add_column("ORIGINAL OUTCOME")
        table.add_column("REPLAY OUTCOME")
        for d in first:
            table.add_row(d.step, f"{original} {_short_digest(d.dna_a)}", f"{replay} {_short_digest(d.dna_b)}")
        parts += [Text(""), table]
    parts += [Text(""), run_diff_view(report)]
    return Group(*parts)
