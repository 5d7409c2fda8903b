"""Following a run until it ends: a live table on a terminal, one line per change otherwise.

`weft run --watch`, `weft runs watch`, `weft runs resume --watch` and `scripts/demo.py`
all show progress through `follow_run`. It only reads (GetRun, WatchRun): leaving the
watch (Ctrl-C) never changes the run.
"""

from __future__ import annotations

from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from weft._client import AsyncClient
from weft._results import RunEvent, RunRecord, StepRun
from weft.cli._output import duration_text, run_header, state_text, step_counts_text, step_detail, steps_table
from weft.v1 import run_pb2


class RunProgress:
    """The latest known state of a run and of each of its steps, updated from watch events."""

    def __init__(self, run: RunRecord) -> None:
        self.run = RunRecord(_without_steps(run.pb))
        # Spec order is kept: GetRun lists every step of the spec, so later events only
        # replace entries, never add (the live renderer reads this from another thread).
        self.steps: dict[str, StepRun] = {s.name: s for s in run.steps}

    def reset(self, run: RunRecord) -> None:
        """Replaces everything with a fresh full read of the run."""
        self.run = RunRecord(_without_steps(run.pb))
        for step in run.steps:
            self.steps[step.name] = step

    def apply(self, event: RunEvent) -> list[str]:
        """Folds one event in; returns a line for each visible change (for non-terminal output)."""
        changes: list[str] = []
        record = event.run
        if record is not None:
            if record.state != self.run.state:
                changes.append(f"run {record.name} {record.state}" + (f": {record.message}" if record.message else ""))
            self.run = record
        step = event.step
        if step is not None:
            before = self.steps.get(step.name)
            if before is None or before.state != step.state or len(before.pb.attempts) != len(step.pb.attempts):
                detail = step_detail(step)
                attempt = f" attempt {len(step.pb.attempts)}" if step.state == "RUNNING" and step.pb.attempts else ""
                changes.append(f"step {step.name} {step.state}{attempt}" + (f" ({detail})" if detail else ""))
            self.steps[step.name] = step
        return changes

    def counts(self) -> dict[str, int]:
        """Step counts by state, from the steps seen."""
        counts: dict[str, int] = {}
        for step in list(self.steps.values()):
            counts[step.state] = counts.get(step.state, 0) + 1
        return counts

    def render(self) -> RenderableType:
        """Header, counts and the steps table."""
        steps = list(self.steps.values())
        done = sum(1 for s in steps if s.is_terminal)
        summary = Text.assemble(
            ("Progress  ", "bold"),
            f"{done}/{len(steps)} steps done  ",
            step_counts_text(self.counts()),
            f"  elapsed {duration_text(self.run.duration)}",
        )
        return Group(run_header(self.run), summary, Text(""), steps_table(steps))


def _without_steps(pb: run_pb2.Run) -> run_pb2.Run:
    copy = run_pb2.Run()
    copy.CopyFrom(pb)
    del copy.steps[:]
    return copy


async def follow_run(client: AsyncClient, run_name: str, console: Console) -> RunRecord:
    """Shows a run's progress until it is terminal and returns its final state (with steps).

    On a terminal the view is a live table refreshed a few times a second (durations
    tick); elsewhere (pipes, CI logs) each change is one timestamped line, followed by the
    final table.
    """
    start = await client.get_run(run_name)
    progress = RunProgress(start)
    if start.is_terminal:
        console.print(progress.render())
        return start
    if console.is_terminal:
        with Live(console=console, get_renderable=progress.render, refresh_per_second=4, transient=False) as live:
            async for event in client.watch_run(run_name):
                progress.apply(event)
                if progress.run.is_terminal:
                    break
            final = await client.get_run(run_name)
            progress.reset(final)
            live.refresh()
        return final
    else:
        console.print(f"watching run {start.name} ({start.pipeline}); Ctrl-C stops watching, not the run")
        async for event in client.watch_run(run_name):
            for line in progress.apply(event):
                stamp = datetime.now().strftime("%H:%M:%S")
                console.print(Text.assemble((stamp + "  ", "dim"), _colour_states(line)))
            if progress.run.is_terminal:
                break
    final = await client.get_run(run_name)
    console.print()
    console.print(RunProgress(final).render())
    return final


def _colour_states(line: str) -> Text:
    text = Text()
    for index, word in enumerate(line.split(" ")):
        if index:
            text.append(" ")
        text.append_text(state_text(word) if word.isupper() and word.isalpha() else Text(word))
    return text
