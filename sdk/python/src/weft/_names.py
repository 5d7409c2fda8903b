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


def pipeline_name(namespace: str, pipeline: str) -> str:
    """The full name of a pipeline given as an id or as a full name."""
    return _full_name(namespace, "pipelines", pipeline)


def run_name(namespace: str, run: str) -> str:
    """The full name of a run given as an id or as a full name."""
    return _full_name(namespace, "runs", run)


def short_id(name: str) -> str:
    """The last segment of a resource name (`namespaces/default/runs/etl-x` → `etl-x`)."""
    return name.rsplit("/", 1)[-1]


def namespace_of(name: str) -> str:
    """The namespace id of a full resource name, or "" for a short id."""
    parts = name.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "namespaces" else ""


def _full_name(namespace: str, collection: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"a {collection[:-1]} name is required")
    if value.startswith("namespaces/"):
        parts = value.split("/")
        if len(parts) != 4 or parts[2] != collection:
            raise InvalidArgument(
                f"{value!r} is not a {collection[:-1]} name: use `namespaces/NS/{collection}/ID` or just `ID`"
            )
        return value
    if "/" in value:
        raise InvalidArgument(f"{value!r} is not a {collection[:-1]} id: ids have no '/'")
    return f"{namespace_name(namespace)}/{collection}/{value}"
