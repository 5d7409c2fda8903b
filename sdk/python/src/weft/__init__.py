"""weft: data pipelines on Kubernetes that never forget the work they have done.

The SDK: `Client` / `AsyncClient` talk to weft-api, `Pipeline` builds pipelines (or
`load_pipeline` reads them from files), `@weft.function` turns Python functions into
steps, and the calls return thin views such as `Run` that keep the raw message as `.pb`.
Every failure is a `weft.errors.WeftError`.

    import weft

    @weft.function(outputs="greeting")
    def say(name: str) -> str:
        return f"hi {name}"

    with weft.Pipeline("hello") as p:
        say(name=p.parameter("name", default="you"))
    with weft.Client.connect("127.0.0.1:50051") as client:
        client.apply(p)
        run = client.create_run("hello").wait()
        print(run.state, run.outputs())

The generated stubs of the API are in `weft.v1`. This package never imports server code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weft import errors
from weft._client import DEFAULT_TARGET, AsyncClient, AsyncRun, Client, RetrySettings, Run
from weft._results import (
    Applied,
    Attempt,
    Blob,
    Explanation,
    LogChunk,
    PipelineVersion,
    RunEvent,
    RunRecord,
    StepRun,
)
from weft.pipeline import (
    Cache,
    OutputRef,
    ParamRef,
    Pipeline,
    Redundancy,
    Retry,
    SecretRef,
    StepHandle,
    SubPipeline,
    literal,
    load_pipeline,
    loads_pipeline,
    secret,
)

if TYPE_CHECKING:
    from weft.functions import Function, FunctionOutputs, function

__version__ = "0.1.0"

#: Imported on first use, so `import weft` does not pay for the function-step machinery
#: (the AST, the runner and its archive support) in programs that never use it.
_LAZY = {"Function": "weft.functions", "FunctionOutputs": "weft.functions", "function": "weft.functions"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'weft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_TARGET",
    "Applied",
    "AsyncClient",
    "AsyncRun",
    "Attempt",
    "Blob",
    "Cache",
    "Client",
    "Explanation",
    "Function",
    "FunctionOutputs",
    "LogChunk",
    "OutputRef",
    "ParamRef",
    "Pipeline",
    "PipelineVersion",
    "Redundancy",
    "Retry",
    "RetrySettings",
    "Run",
    "RunEvent",
    "RunRecord",
    "SecretRef",
    "StepHandle",
    "StepRun",
    "SubPipeline",
    "__version__",
    "errors",
    "function",
    "literal",
    "load_pipeline",
    "loads_pipeline",
    "secret",
]
