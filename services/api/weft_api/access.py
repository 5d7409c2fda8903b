"""Who may call what on weft-api: the one table of each RPC's role and namespace field.

`API_RULES` maps every method of PipelineService, RunService and ArtifactService to the
role it needs (weft_core.auth: viewer ⊂ runner ⊂ admin) in the namespace its request
names. `create_server` refuses to start with auth when a served method has no row, and
`tests/integration/auth/test_auth.py` enumerates the services' descriptors, so an RPC
added later cannot be left open.

The namespace functions parse the same request fields the services parse, with the same
InvalidArgument messages, so a malformed name is refused before any role check reveals
anything. This module never reads etcd: the blob reference check (a digest is not a
capability) lives in `weft_api.artifacts`.
"""

from __future__ import annotations

from typing import Any

from weft_core.auth import EVERY_NAMESPACE, Role, Rule, require_namespace_field
from weft_core.errors import InvalidArgument
from weft_core.spec import parse_namespace, parse_pipeline_name, parse_run_name


def _parent(request: Any) -> str:
    return parse_namespace(request.parent)


def _pipeline(request: Any) -> str:
    return parse_pipeline_name(request.name)[0]


def _run(request: Any) -> str:
    return parse_run_name(request.name)[0]


def _run_field(request: Any) -> str:
    return parse_run_name(request.run, "run")[0]


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
    _RUNS + "ExplainStep": Rule(Role.VIEWER, _run_field),
    _RUNS + "ReadLogs": Rule(Role.VIEWER, _run_field),
    _ARTIFACTS + "PutBlob": Rule(Role.RUNNER, _blob_upload),
    _ARTIFACTS + "GetBlob": Rule(Role.VIEWER, _blob_read),
    _ARTIFACTS + "StatBlob": Rule(Role.VIEWER, _blob_read),
}
