"""What the run index holds: a small summary of each run, the same whoever writes it.

The api (CreateRun, CancelRun) and the executors (every state change) write a run's
`runindex` key in the same transaction as its run key. Both build the value with
`run_summary`, so the index stays small no matter how large the run record is: ListRuns
and the executors' run listing read up to 1,000 index entries per etcd response, which
must stay far under the client's receive limit (a run record may hold 256 KiB of
parameters; 1,000 of those would not fit).

The summary never carries parameters, parameter digests or the trace context: whoever
needs them reads the run key. Nothing here touches etcd.
"""

from __future__ import annotations

from weft.v1 import run_pb2

#: Longest run message kept in the summary (GetRun shows the whole message). A cancel
#: reason is at most 1,024 characters, so executors still see it in full.
MAX_SUMMARY_MESSAGE_CHARS = 2048


def run_summary(run: run_pb2.Run) -> run_pb2.Run:
    """The runindex value of `run`: the run without parameters, digests, trace context or steps.

    Args:
        run: A run record (not modified).

    Returns:
        A new Run with the name, pipeline and version, state, times, labels, options,
        step counts, message (cut to `MAX_SUMMARY_MESSAGE_CHARS`), failed step,
        resumed_from and etag of `run`.
    """
    summary = run_pb2.Run()
    summary.CopyFrom(run)
    summary.ClearField("parameters")
    summary.ClearField("parameter_digests")
    summary.ClearField("traceparent")
    summary.ClearField("steps")
    if len(summary.message) > MAX_SUMMARY_MESSAGE_CHARS:
        summary.message = summary.message[: MAX_SUMMARY_MESSAGE_CHARS - 1] + "…"
    return summary
