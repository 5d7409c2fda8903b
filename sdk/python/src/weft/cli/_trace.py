"""`weft trace` and `weft events`: a run's timeline in the terminal, in a page, or played back.

    weft trace RUN                 a Gantt of steps and attempts, fitted to the terminal
    weft trace RUN --follow        the same, redrawn until the run ends
    weft trace RUN --html FILE     one self-contained page: timeline, DAG, step details
    weft events RUN                the forensic timeline (weft-tracer's ListRunEvents)
    weft events RUN --replay       the same, played back with its recorded timing

The Gantt comes from the run's own records (GetRun: every attempt with its times and
fate), so it is exact even when no span was ever exported; the page adds the forensic
timeline and the span count from weft-tracer when it can be reached (`--tracer`, env
WEFT_TRACER). These commands only read; the page is written only where asked, and it
loads nothing from the network (its CSS, script and drawings are inline).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.live import Live
from rich.table import Table
from rich.text import Text

from weft._client import AsyncClient
from weft.cli import _output as out
from weft.errors import Unavailable, WeftError
from weft.v1 import pipeline_pb2, run_pb2, trace_pb2

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Attempt = run_pb2.Attempt
TERMINAL_RUN = (Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED)

#: What each mark in a Gantt row means (the legend lists those the drawing uses).
MARKS = {
    "█": "ran",
    "▒": "running",
    "✗": "attempt failed",
    "░": "lost with its executor",
    "⊘": "loser (finished after the commit)",
    "◆": "cache hit",
    "·": "waiting for an executor",
}
_ATTEMPT_STYLE = {
    Attempt.STATE_SUCCEEDED: ("█", "green"),
    Attempt.STATE_RUNNING: ("▒", "blue"),
    Attempt.STATE_FAILED: ("✗", "red"),
    Attempt.STATE_CANCELLED: ("✗", "yellow"),
    Attempt.STATE_LOST: ("░", "yellow"),
}
_LOST_COMMIT = "lost the commit"


def _nanos(stamp: Timestamp) -> int:
    return stamp.ToNanoseconds() if stamp.seconds or stamp.nanos else 0


def _state(enum: Any, value: int) -> str:
    return str(enum.Name(value)).removeprefix("STATE_")


def _span(run: Run, now_ns: int) -> tuple[int, int]:
    """The time axis: from the run's creation to its end (or now)."""
    start = _nanos(run.create_time) or min(
        (_nanos(a.start_time) for s in run.steps for a in s.attempts if _nanos(a.start_time)), default=now_ns
    )
    end = _nanos(run.end_time) if run.state in TERMINAL_RUN and _nanos(run.end_time) else now_ns
    ends = [_nanos(a.end_time) for s in run.steps for a in s.attempts] + [_nanos(s.end_time) for s in run.steps]
    end = max([end, *ends])
    return start, max(end, start + 1)


def step_label(step: StepRun) -> str:
    """What the row's right column says: state, then attempts, retries, losses, losers."""
    state = _state(StepRun.State, step.state)
    attempts = [a for a in step.attempts if not a.message.startswith(_LOST_COMMIT)]
    parts = [state]
    if step.state == StepRun.STATE_CACHED:
        parts.append("cache hit")
    if len(attempts) > 1:
        failed = sum(1 for a in attempts if a.state == Attempt.STATE_FAILED)
        lost = sum(1 for a in attempts if a.state == Attempt.STATE_LOST)
        extra = [f"{failed} retried" if failed and step.state != StepRun.STATE_FAILED else ""]
        extra.append(f"{lost} lost" if lost else "")
        parts.append(f"{len(attempts)} attempts" + "".join(f", {e}" for e in extra if e))
    losers = len(step.attempts) - len(attempts)
    if losers:
        parts.append(f"{losers} loser{'s' if losers > 1 else ''}")
    ended = _nanos(step.end_time)
    started = min((_nanos(a.start_time) for a in attempts if _nanos(a.start_time)), default=0)
    if ended and started:
        parts.append(out.duration_text((ended - started) / 1e9))
    return " · ".join(parts)


def gantt(run: Run, width: int, now_ns: int | None = None) -> list[Text]:
    """The run's steps and attempts on one time axis, `width` columns wide (at least 40)."""
    now_ns = now_ns or time.time_ns()
    width = max(width, 40)
    start, end = _span(run, now_ns)
    names = [s.step for s in run.steps] or [""]
    name_width = min(max(len(n) for n in names), 24)
    labels = [step_label(s) for s in run.steps]
    label_width = min(max((len(label) for label in labels), default=0), max(width // 3, 12))
    bar = max(width - name_width - label_width - 4, 10)
    scale = bar / (end - start)

    def column(nanos: int) -> int:
        return min(bar - 1, max(0, int((nanos - start) * scale)))

    lines: list[Text] = []
    header = Text(f"run {run.name}  ", style="bold")
    header.append(_state(Run.State, run.state), style=out.STATE_STYLES.get(_state(Run.State, run.state), ""))
    header.append(f"  {out.duration_text((end - start) / 1e9)}", style="dim")
    lines.append(header)
    for step, label in zip(run.steps, labels, strict=True):
        cells: list[tuple[str, str]] = [(" ", "")] * bar
        ready = _nanos(step.ready_time)
        first = min((_nanos(a.start_time) for a in step.attempts if _nanos(a.start_time)), default=0)
        waited_until = first or _nanos(step.end_time) or (now_ns if step.state == StepRun.STATE_READY else 0)
        if ready and waited_until:
            for i in range(column(ready), column(waited_until)):
                cells[i] = ("·", "dim")
        for attempt in step.attempts:
            a_start = _nanos(attempt.start_time)
            if not a_start:
                continue
            a_end = _nanos(attempt.end_time) or now_ns
            mark, style = _ATTEMPT_STYLE.get(attempt.state, ("▒", "blue"))
            loser = attempt.message.startswith(_LOST_COMMIT)
            first_col, last_col = column(a_start), column(a_end)
            for i in range(first_col, last_col + 1):
                if loser:
                    cells[i] = ("⊘", "magenta")
                elif attempt.state in (Attempt.STATE_FAILED, Attempt.STATE_CANCELLED) and i < last_col:
                    cells[i] = ("█", style)  # the failed attempt ran; its end is marked ✗
                else:
                    cells[i] = (mark if i == last_col or mark != "✗" else "█", style)
        if step.state == StepRun.STATE_CACHED and _nanos(step.end_time):
            cells[column(_nanos(step.end_time))] = ("◆", "bold magenta")
        row = Text(f"{step.step[:name_width]:<{name_width}} │", style="bold")
        for char, style in cells:
            row.append(char, style=style)
        state = _state(StepRun.State, step.state)
        row.append("│ ", style="bold")
        row.append(label[:label_width], style=out.STATE_STYLES.get(state, ""))
        lines.append(row)
    axis = Text(" " * name_width + " └" + "─" * bar + "┘", style="dim")
    lines.append(axis)
    total = (end - start) / 1e9
    ticks = Text(" " * (name_width + 2) + "0s")
    end_label = out.duration_text(total)
    ticks.append(" " * max(bar - 2 - len(end_label), 1) + end_label)
    lines.append(Text(ticks.plain, style="dim"))
    used = {char for line in lines[1:-2] for char in line.plain}
    legend = [f"{mark} {meaning}" for mark, meaning in MARKS.items() if mark in used]
    current = ""
    for item in legend:
        if current and len(current) + 2 + len(item) > width:
            lines.append(Text(current, style="dim"))
            current = ""
        current = f"{current}  {item}" if current else item
    if current:
        lines.append(Text(current, style="dim"))
    for line in lines:
        line.truncate(width)  # a long run name must not wrap the drawing
    return lines


def _terminal_width() -> int:
    return out.console.width if out.console.is_terminal else shutil.get_terminal_size((120, 24)).columns


async def trace(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft trace RUN [--follow] [--html FILE]`."""
    client.tracer = args.tracer
    run = await client.get_run(args.run)
    if args.html:
        return await _write_page(client, run.pb, Path(args.html))
    if args.output != "table":
        out.emit_messages(await _run_trace(client, run.full_name), args.output)
        return 0
    if args.follow and run.pb.state not in TERMINAL_RUN:
        with Live(console=out.console, auto_refresh=False) as live:
            while True:
                live.update(Text("\n").join(gantt(run.pb, _terminal_width())), refresh=True)
                if run.pb.state in TERMINAL_RUN:
                    break
                await asyncio.sleep(0.5)
                run = await client.get_run(args.run)
        return 0 if run.pb.state == Run.STATE_SUCCEEDED else 1
    for line in gantt(run.pb, _terminal_width()):
        out.console.print(line, soft_wrap=True)
    return 0


async def _run_trace(client: AsyncClient, run: str) -> trace_pb2.RunTrace:
    try:
        return await client.get_run_trace(run)
    except Unavailable as error:
        raise Unavailable(
            f"cannot reach weft-tracer at {client.tracer}: {error.message}; "
            "start the stack with `weft up`, or point --tracer (env WEFT_TRACER) at one"
        ) from error


# The forensic timeline ------------------------------------------------------------------


def event_row(event: trace_pb2.TimelineEvent, origin_ns: int) -> list[Text]:
    kind = trace_pb2.TimelineEvent.Kind.Name(event.kind).removeprefix("KIND_")
    style = {
        "CACHE_HIT": "bold magenta",
        "ATTEMPT_FAILED": "red",
        "FAILED": "bold red",
        "LOST": "yellow",
        "RETRIED": "yellow",
        "LOSER": "magenta",
        "COMMITTED": "green",
        "CANCELLED": "yellow",
    }.get(kind, "")
    offset = (event.time.ToNanoseconds() - origin_ns) / 1e9
    return [
        Text(f"+{offset:.3f}s", style="dim"),
        Text(kind, style=style),
        Text(event.step + (f" #{event.attempt}" if event.attempt else "")),
        Text(event.executor),
        Text(event.where, style="dim"),
        Text(" ".join(line.strip() for line in event.message.splitlines() if line.strip())),
    ]


def events_table(events: Sequence[trace_pb2.TimelineEvent]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("time", "event", "step", "executor", "where", "why"):
        table.add_column(column, overflow="fold")
    origin = events[0].time.ToNanoseconds() if events else 0
    for event in events:
        table.add_row(*event_row(event, origin))
    return table


async def events(args: argparse.Namespace, client: AsyncClient) -> int:
    """`weft events RUN [--step S] [--replay [--speed N]]`."""
    client.tracer = args.tracer
    run = args.run
    if args.speed is not None and args.speed <= 0:
        raise WeftError(f"--speed {args.speed}: must be above 0 (1 is real time, 10 ten times faster)")
    try:
        if args.replay:
            origin = 0
            async for event in client.replay_run_events(run, speed=args.speed or 1.0, step=args.step or ""):
                if args.output != "table":
                    out.emit_messages(event, args.output)
                    continue
                origin = origin or event.time.ToNanoseconds()
                row = Text(" ").join(event_row(event, origin))
                out.console.print(row, soft_wrap=True)
            return 0
        listed = [e async for e in client.list_run_events(run, step=args.step or "")]
    except Unavailable as error:
        raise Unavailable(
            f"cannot reach weft-tracer at {client.tracer}: {error.message}; "
            "start the stack with `weft up`, or point --tracer (env WEFT_TRACER) at one"
        ) from error
    if args.output != "table":
        out.emit_messages(listed, args.output)
        return 0
    out.console.print(events_table(listed))
    return 0


# The page -----------------------------------------------------------------------------------


async def _log_tail(client: AsyncClient, run: str, step: StepRun, lines: int = 20) -> str:
    if not step.attempts or step.state == StepRun.STATE_CACHED:
        return ""
    data = bytearray()
    try:
        async for chunk in client.read_logs(run, step.step):
            data.extend(chunk.data)
    except WeftError as error:
        return f"(log not available: {error.message})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


async def page_data(client: AsyncClient, run: Run) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    spec: pipeline_pb2.PipelineSpec | None = None
    try:
        version = await client.get_pipeline(run.pipeline, version=run.pipeline_version or None)
        spec = version.spec
    except WeftError:
        spec = None
    upstream = {s.name: out.upstream_of(s) for s in spec.steps} if spec is not None else {}
    events: list[trace_pb2.TimelineEvent] = []
    span_count = 0
    tracer_note = ""
    try:
        events = [e async for e in client.list_run_events(run.name)]
        span_count = len((await client.get_run_trace(run.name)).spans)
    except WeftError as error:
        tracer_note = f"weft-tracer at {client.tracer} gave no timeline: {error.message}"
    start, end = _span(run, time.time_ns())
    steps = []
    for step in run.steps[:500]:
        steps.append(
            {
                "name": step.step,
                "state": _state(StepRun.State, step.state),
                "label": step_label(step),
                "ready": (_nanos(step.ready_time) - start) / 1e9 if _nanos(step.ready_time) else None,
                "end": (_nanos(step.end_time) - start) / 1e9 if _nanos(step.end_time) else None,
                "dna": step.dna,
                "reason": step.explanation.reason,
                "message": step.message,
                "upstream": upstream.get(step.step, []),
                "log": await _log_tail(client, run.name, step),
                "attempts": [
                    {
                        "number": a.number,
                        "state": "LOSER" if a.message.startswith(_LOST_COMMIT) else _state(Attempt.State, a.state),
                        "executor": a.executor,
                        "handle": a.handle,
                        "start": (_nanos(a.start_time) - start) / 1e9 if _nanos(a.start_time) else None,
                        "end": (_nanos(a.end_time) - start) / 1e9 if _nanos(a.end_time) else None,
                        "message": a.message,
                    }
                    for a in step.attempts
                ],
            }
        )
    return {
        "run": run.name,
        "state": _state(Run.State, run.state),
        "message": run.message,
        "created": datetime.fromtimestamp(start / 1e9, UTC).isoformat(),
        "duration": (end - start) / 1e9,
        "steps": steps,
        "spans": span_count,
        "tracer_note": tracer_note,
        "events": [
            {
                "t": (e.time.ToNanoseconds() - start) / 1e9,
                "kind": trace_pb2.TimelineEvent.Kind.Name(e.kind).removeprefix("KIND_"),
                "step": e.step,
                "attempt": e.attempt,
                "executor": e.executor,
                "where": e.where,
                "message": e.message,
            }
            for e in events
        ],
    }


async def _write_page(client: AsyncClient, run: Run, path: Path) -> int:
    data = await page_data(client, run)
    await asyncio.to_thread(path.write_text, html_page(data), encoding="utf-8")
    out.console.print(
        Text.assemble(
            ("wrote ", "dim"), str(path), (f"  ({len(data['steps'])} steps, {len(data['events'])} events)", "dim")
        )
    )
    return 0


def html_page(data: dict[str, Any]) -> str:
    """The self-contained page: `data` inline as JSON, drawn by inline script into SVG."""
    # `</` must not appear inside the script element: a log line could close it early.
    payload = json.dumps(data).replace("</", "<\\/")
    title = html.escape(f"weft trace {data['run']}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", payload)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1d2330; background: #fafbfc; }
  h1 { font-size: 18px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 18px 0 6px; }
  .meta { color: #5b6475; margin-bottom: 8px; }
  .panel { background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 10px; overflow-x: auto; }
  svg text { font: 12px system-ui, sans-serif; }
  .step-row { cursor: pointer; }
  .step-row:hover rect.bg { fill: #eef3fb; }
  #details pre { background: #11151c; color: #e6e6e6; padding: 8px; border-radius: 4px; max-height: 300px;
                 overflow: auto; white-space: pre-wrap; }
  #details dt { font-weight: 600; } #details dd { margin: 0 0 6px 0; word-break: break-all; }
  table.events { border-collapse: collapse; width: 100%; font-size: 12px; }
  table.events td, table.events th { text-align: left; padding: 2px 8px; border-bottom: 1px solid #eef0f4; }
  .legend span { display: inline-block; margin-right: 14px; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="meta" id="meta"></div>
<div class="legend" id="legend"></div>
<h2>Timeline</h2>
<div class="panel"><svg id="timeline" xmlns="http://www.w3.org/2000/svg"></svg></div>
<h2>DAG</h2>
<div class="panel"><svg id="dag" xmlns="http://www.w3.org/2000/svg"></svg></div>
<h2>Step</h2>
<div class="panel" id="details">Click a step in the timeline or the DAG.</div>
<h2>Events</h2>
<div class="panel"><table class="events" id="events"></table></div>
<script id="weft-data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("weft-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const COLORS = {SUCCEEDED: "#2e9e5b", CACHED: "#a246c9", FAILED: "#d64545", RUNNING: "#3b78d8", LOST: "#e0a526",
  CANCELLED: "#c9a227", SKIPPED: "#b8b8b8", WAITING: "#c8ccd4", READY: "#5bc0de", LOSER: "#c061a6"};
function el(name, attrs, parent, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
function fmt(s) {
  if (s === null || s === undefined) return "-";
  return s < 60 ? s.toFixed(2) + "s" : (s / 60).toFixed(1) + "m";
}
document.getElementById("title").textContent = "Run " + data.run;
document.getElementById("meta").textContent = data.state + " · created " + data.created + " · " + fmt(data.duration) +
  " · " + data.steps.length + " steps · " + data.spans + " spans" + (data.message ? " · " + data.message : "") +
  (data.tracer_note ? " · " + data.tracer_note : "");
const legend = document.getElementById("legend");
for (const [state, color] of Object.entries(COLORS)) {
  const item = document.createElement("span");
  const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = color;
  item.appendChild(sw); item.appendChild(document.createTextNode(state.toLowerCase())); legend.appendChild(item);
}
function showStep(step) {
  const box = document.getElementById("details");
  box.textContent = "";
  const h = document.createElement("h3"); h.textContent = step.name + " — " + step.label; box.appendChild(h);
  const dl = document.createElement("dl");
  const rows = [["DNA", step.dna || "-"], ["Why", step.reason || "-"], ["Message", step.message || "-"],
    ["Upstream", step.upstream.join(", ") || "-"]];
  for (const a of step.attempts) {
    const where = (a.executor || "?") + (a.handle ? " (" + a.handle + ")" : "");
    const why = a.message ? " — " + a.message : "";
    rows.push(["Attempt " + a.number, a.state + " on " + where + ", " + fmt(a.start) + " → " + fmt(a.end) + why]);
  }
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k; dl.appendChild(dt);
    const dd = document.createElement("dd"); dd.textContent = v; dl.appendChild(dd);
  }
  box.appendChild(dl);
  const pre = document.createElement("pre"); pre.textContent = step.log || "(no log)"; box.appendChild(pre);
}
// Timeline: one row per step, attempts as bars, a diamond for a cache hit.
(function drawTimeline() {
  const svg = document.getElementById("timeline");
  const nameW = 170, rowH = 22, width = Math.max(600, (svg.parentNode.clientWidth || 1000) - 30);
  const barW = width - nameW - 20, total = Math.max(data.duration, 0.001);
  const x = (t) => nameW + Math.max(0, Math.min(1, t / total)) * barW;
  svg.setAttribute("width", width); svg.setAttribute("height", data.steps.length * rowH + 30);
  data.steps.forEach((step, i) => {
    const y = i * rowH;
    const g = el("g", {"class": "step-row", "data-step": step.name}, svg);
    el("rect", {"class": "bg", x: 0, y: y, width: width, height: rowH, fill: i % 2 ? "#fff" : "#f6f8fb"}, g);
    el("text", {x: 4, y: y + 15}, g, step.name.length > 24 ? step.name.slice(0, 23) + "…" : step.name);
    if (step.ready !== null) {
      const until = step.attempts.length && step.attempts[0].start !== null ? step.attempts[0].start : step.end;
      if (until !== null) el("line", {x1: x(step.ready), x2: x(until), y1: y + 11, y2: y + 11, stroke: "#aab",
        "stroke-dasharray": "2,2"}, g);
    }
    for (const a of step.attempts) {
      if (a.start === null) continue;
      const end = a.end === null ? total : a.end;
      const bar = el("rect", {x: x(a.start), y: y + 4, width: Math.max(2, x(end) - x(a.start)), height: rowH - 8,
        rx: 2, fill: COLORS[a.state] || "#888"}, g);
      el("title", {}, bar, step.name + " attempt " + a.number + ": " + a.state);
    }
    if (step.state === "CACHED" && step.end !== null) {
      const cx = x(step.end), cy = y + 11;
      el("path", {d: `M${cx} ${cy - 6} L${cx + 6} ${cy} L${cx} ${cy + 6} L${cx - 6} ${cy} Z`, fill: COLORS.CACHED}, g);
    }
    g.addEventListener("click", () => showStep(step));
  });
  const axisY = data.steps.length * rowH + 4;
  el("line", {x1: nameW, x2: nameW + barW, y1: axisY, y2: axisY, stroke: "#889"}, svg);
  for (let k = 0; k <= 4; k++) {
    const anchor = k === 0 ? "start" : (k === 4 ? "end" : "middle");
    const tick = {x: nameW + (barW * k) / 4, y: axisY + 18, fill: "#556", "text-anchor": anchor};
    el("text", tick, svg, fmt((total * k) / 4));
  }
})();
// DAG: steps in layers by their upstream steps, nodes coloured by state.
(function drawDag() {
  const svg = document.getElementById("dag");
  const byName = new Map(data.steps.map((s) => [s.name, s]));
  const layer = new Map();
  function depth(name, seen) {
    if (layer.has(name)) return layer.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const ups = (byName.get(name) || {upstream: []}).upstream.filter((u) => byName.has(u));
    const d = ups.length ? 1 + Math.max(...ups.map((u) => depth(u, seen))) : 0;
    layer.set(name, d);
    return d;
  }
  data.steps.forEach((s) => depth(s.name, new Set()));
  const columns = [];
  data.steps.forEach((s) => { const d = layer.get(s.name); (columns[d] = columns[d] || []).push(s); });
  const nodeW = 150, nodeH = 28, gapX = 60, gapY = 14, pos = new Map();
  columns.forEach((col, c) => col.forEach((s, r) => {
    pos.set(s.name, {x: 10 + c * (nodeW + gapX), y: 10 + r * (nodeH + gapY)});
  }));
  const rows = Math.max(1, ...columns.map((c) => c.length));
  svg.setAttribute("width", 20 + columns.length * (nodeW + gapX));
  svg.setAttribute("height", 20 + rows * (nodeH + gapY));
  for (const s of data.steps) for (const u of s.upstream) {
    if (!pos.has(u)) continue;
    const a = pos.get(u), b = pos.get(s.name);
    const ay = a.y + nodeH / 2, by = b.y + nodeH / 2, ax = a.x + nodeW;
    const d = `M${ax} ${ay} C${ax + gapX / 2} ${ay} ${b.x - gapX / 2} ${by} ${b.x} ${by}`;
    el("path", {d: d, stroke: "#99a", fill: "none"}, svg);
  }
  for (const s of data.steps) {
    const p = pos.get(s.name);
    const g = el("g", {"class": "step-row dag-node", "data-step": s.name}, svg);
    el("rect", {x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 5, fill: COLORS[s.state] || "#888"}, g);
    el("text", {x: p.x + 8, y: p.y + 18, fill: "#fff"}, g, s.name.length > 20 ? s.name.slice(0, 19) + "…" : s.name);
    el("title", {}, g, s.name + ": " + s.label);
    g.addEventListener("click", () => showStep(s));
  }
})();
// The forensic timeline from weft-tracer.
(function drawEvents() {
  const table = document.getElementById("events");
  const head = table.insertRow();
  for (const h of ["time", "event", "step", "executor", "where", "why"]) {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  }
  for (const e of data.events) {
    const row = table.insertRow();
    for (const v of ["+" + e.t.toFixed(3) + "s", e.kind, e.step + (e.attempt ? " #" + e.attempt : ""), e.executor,
      e.where, e.message]) row.insertCell().textContent = v;
  }
  if (!data.events.length) table.insertRow().insertCell().textContent = data.tracer_note || "no events";
})();
if (data.steps.length) showStep(data.steps.find((s) => s.state === "FAILED") || data.steps[0]);
</script>
</body>
</html>
"""
