"""Who may call what on weft-api: the one table of each RPC's role and namespace field.

`API_RULES` maps every method of PipelineService, RunService and ArtifactService to the
role it needs (weft_core.auth: viewer ⊂ runner ⊂ admin) in the namespace its request
names. `create_server` refuses to start with auth when a served method has no row, and
`tests/integration/auth/test_auth.py` enumerates the services' descriptors, so an RPC
added later cannot be left open.

The namespace functions parse the same request fields the services parse, with the same
InvalidArgument messages, so a malformed name is refused before any role check reveals
anything. `check_step_security` is the namespace policy on steps that relax the hardened
pod defaults. This module never reads etcd: the blob reference check (a digest is not a
capability) lives in `weft_api.artifacts`.
"""

from __future__ import annotations

import re
from typing import Any

from weft.v1 import pipeline_pb2
from weft_core.auth import EVERY_NAMESPACE, Role, Rule, require_namespace_field
from weft_core.errors import InvalidArgument
from weft_core.spec import parse_namespace, parse_pipeline_name, parse_run_name, raise_problems


def _parent(request: Any) -> str:
    return parse_namespace(request.parent)


def _pipeline(request: Any) -> str:
    return parse_pipeline_name(request.name)[0]


def _run(request: Any) -> str:
    return parse_run_name(request.name)[0]


def _run_field(request: Any) -> str:
    return parse_run_name(request.run, "run")[0]


def _both_runs(request: Any) -> str:
    # A Rule names one namespace: two runs in one namespace need viewer there; runs in two
    # namespaces need viewer in every namespace (a cluster-wide binding), never in just one.
    a = parse_run_name(request.run_a, "run_a")[0]
    b = parse_run_name(request.run_b, "run_b")[0]
    return a if a == b else EVERY_NAMESPACE


def _lineage(request: Any) -> str:
    # The namespace GetLineage walks: the step's run's, else `parent` (weft_api.lineage).
    return parse_run_name(request.run, "run")[0] if request.step else parse_namespace(request.parent)


def blob_namespace(value: str, field: str) -> str:
    """The namespace of a blob request: a bare name, or "" for every namespace."""
    return require_namespace_field(value, field) if value else EVERY_NAMESPACE


def _blob_read(request: Any) -> str:
    return blob_namespace(request.namespace, "namespace")


def _blob_upload(message: Any) -> str:
    if message.WhichOneof("part") != "header":
        raise InvalidArgument(
            "header: the first message of PutBlob must be the header (digest, size_bytes, namespace), then the data",
            field="header",
        )
    return blob_namespace(message.header.namespace, "header.namespace")


_PIPELINES = "/weft.v1.PipelineService/"
_RUNS = "/weft.v1.RunService/"
_ARTIFACTS = "/weft.v1.ArtifactService/"

#: The rule of every weft-api method (see the module docstring).
API_RULES: dict[str, Rule] = {
    _PIPELINES + "CreatePipeline": Rule(Role.ADMIN, _parent),
    _PIPELINES + "GetPipeline": Rule(Role.VIEWER, _pipeline),
    _PIPELINES + "ListPipelines": Rule(Role.VIEWER, _parent),
    _PIPELINES + "ListPipelineVersions": Rule(Role.VIEWER, _pipeline),
    _PIPELINES + "DeletePipeline": Rule(Role.ADMIN, _pipeline),
    _RUNS + "CreateRun": Rule(Role.RUNNER, _parent),
    _RUNS + "GetRun": Rule(Role.VIEWER, _run),
    _RUNS + "ListRuns": Rule(Role.VIEWER, _parent),
    _RUNS + "WatchRun": Rule(Role.VIEWER, _run),
    _RUNS + "CancelRun": Rule(Role.RUNNER, _run),
    _RUNS + "ResumeRun": Rule(Role.RUNNER, _run),
    _RUNS + "ReplayRun": Rule(Role.RUNNER, _run),
    _RUNS + "ExplainStep": Rule(Role.VIEWER, _run_field),
    _RUNS + "DiffRuns": Rule(Role.VIEWER, _both_runs),
    _RUNS + "GetLineage": Rule(Role.VIEWER, _lineage),
    _RUNS + "ReadLogs": Rule(Role.VIEWER, _run_field),
    _ARTIFACTS + "PutBlob": Rule(Role.RUNNER, _blob_upload),
    _ARTIFACTS + "GetBlob": Rule(Role.VIEWER, _blob_read),
    _ARTIFACTS + "StatBlob": Rule(Role.VIEWER, _blob_read),
}


#: Most capabilities a step may add back.
MAX_ADDED_CAPABILITIES = 16
_CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")


def check_step_security(spec: pipeline_pb2.PipelineSpec, namespace: str, relaxed: frozenset[str]) -> None:
    """Refuses steps that relax the hardened pod defaults outside the namespaces allowed to.

    Raises:
        InvalidArgument: Naming each step's `container.security` that is not allowed or
            malformed, and how to fix it.
    """
    problems: list[tuple[str, str]] = []
    for i, step in enumerate(spec.steps):
        field = f"pipeline.spec.steps[{i}].container.security"
        security = step.container.security
        if not step.container.HasField("security") or security == pipeline_pb2.StepSecurity():
            continue
        if namespace not in relaxed and EVERY_NAMESPACE not in relaxed:
            problems.append(
                (
                    field,
                    f'step "{step.name}" asks to relax the hardened pod defaults, which namespace "{namespace}" does '
                    "not allow; remove container.security, or have an operator add the namespace to weft-api "
                    "--relaxed-security-namespaces",
                )
            )
            continue
        if len(security.add_capabilities) > MAX_ADDED_CAPABILITIES:
            problems.append((f"{field}.add_capabilities", f"at most {MAX_ADDED_CAPABILITIES} capabilities"))
        for j, capability in enumerate(security.add_capabilities):
            if not _CAPABILITY.match(capability):
                problems.append(
                    (
                        f"{field}.add_capabilities[{j}]",
                        'is not a capability name; use upper case without the CAP_ prefix, e.g. "NET_BIND_SERVICE"',
                    )
                )
    raise_problems(problems)
