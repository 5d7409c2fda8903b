"""Resource names of weft's API: `namespaces/{ns}/pipelines/{p}` and `namespaces/{ns}/runs/{r}`.

Callers of the SDK and the CLI may give either a short id (`etl`) or a full resource name;
these functions turn both into the full name the API expects. They only format and split
strings: validating ids is the server's job, so its messages stay the single source.
"""

from __future__ import annotations

from weft.errors import InvalidArgument


def namespace_name(namespace: str) -> str:
    """`namespaces/{namespace}`."""
    return namespace if namespace.startswith("namespaces/") else f"namespaces/{namespace}"


def pipeline_name(namespace: str, pipeline: str, argument: str = "name") -> str:
    """The full name of a pipeline given as an id or as a full name.

    Raises:
        InvalidArgument: Naming `argument` (the caller's parameter) when the value is malformed.
    """
    return _full_name(namespace, "pipelines", pipeline, argument)


def run_name(namespace: str, run: str, argument: str = "name") -> str:
    """The full name of a run given as an id or as a full name.

    Raises:
        InvalidArgument: Naming `argument` (the caller's parameter) when the value is malformed.
    """
    return _full_name(namespace, "runs", run, argument)


def short_id(name: str) -> str:
    """The last segment of a resource name (`namespaces/default/runs/etl-x` → `etl-x`)."""
    return name.rsplit("/", 1)[-1]


def namespace_of(name: str) -> str:
    """The namespace id of a full resource name, or "" for a short id."""
    parts = name.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "namespaces" else ""


def _full_name(namespace: str, collection: str, value: str, argument: str) -> str:
    kind = collection[:-1]
    forms = f"give an id like `ID` or a full name `namespaces/NS/{collection}/ID`"
    if not value:
        raise InvalidArgument(f"{argument}: a {kind} name is required; {forms}")
    if value.startswith("namespaces/"):
        parts = value.split("/")
        if len(parts) != 4 or parts[2] != collection or not parts[1] or not parts[3]:
            raise InvalidArgument(f"{argument}: {value!r} is not a {kind} name; {forms}")
        return value
    if "/" in value:
        raise InvalidArgument(f"{argument}: {value!r} is not a {kind} id (ids have no '/'); {forms}")
    return f"{namespace_name(namespace)}/{collection}/{value}"
