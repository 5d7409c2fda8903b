"""Who may call what on weft-tracer: the one table of each RPC's role and namespace.

`TRACER_RULES` maps every method the tracer serves, weft.v1.TraceService and the OTLP
collector's Export, to the role it needs (weft_core.auth: viewer ⊂ runner ⊂ admin).
`create_server` refuses to start with auth when a served method has no row, and
`tests/integration/auth/test_tracer_auth.py` enumerates the descriptors, so an RPC added
later cannot be left open.

- A run's trace and timeline are reads of that run: viewer in the run's namespace.
- The tracer's counters span every namespace: viewer in every namespace (`*`).
- Exporting spans writes into every namespace's traces (a span names any run), so Export
  needs runner in every namespace: the services' peer token (a cluster-wide binding),
  never a namespace's user. A step's span token (weft_core.span_tokens) is admitted too,
  and the receiver keeps only the spans of the one trace it grants; every other method
  refuses a span token.

This module never reads etcd or the span store.
"""

from __future__ import annotations

from typing import Any

from weft_core.auth import Role, Rule
from weft_core.spec import parse_run_name
from weft_tracer.ingest import OTLP_TRACE_SERVICE

_TRACES = "/weft.v1.TraceService/"


def _run(request: Any) -> str:
    # The same parse, with the same InvalidArgument, as weft_tracer.service.
    return parse_run_name(request.run, "run")[0]


#: The rule of every weft-tracer method (see the module docstring).
TRACER_RULES: dict[str, Rule] = {
    _TRACES + "GetRunTrace": Rule(Role.VIEWER, _run),
    _TRACES + "ListRunEvents": Rule(Role.VIEWER, _run),
    _TRACES + "ReplayRunEvents": Rule(Role.VIEWER, _run),
    _TRACES + "GetTracerStatus": Rule(Role.VIEWER),
    f"/{OTLP_TRACE_SERVICE}/Export": Rule(Role.RUNNER, span_tokens=True),
}
