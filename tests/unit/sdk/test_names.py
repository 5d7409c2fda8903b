"""Short ids and full resource names both reach the API as full names."""

from __future__ import annotations

import pytest

import weft
from weft import _names
from weft.errors import InvalidArgument


def test_short_ids_get_the_namespace() -> None:
    assert _names.pipeline_name("default", "etl") == "namespaces/default/pipelines/etl"
    assert _names.run_name("team-a", "etl-x1") == "namespaces/team-a/runs/etl-x1"
    assert _names.namespace_name("default") == "namespaces/default"
    assert _names.namespace_name("namespaces/x") == "namespaces/x"


def test_full_names_pass_through() -> None:
    assert _names.run_name("default", "namespaces/other/runs/r") == "namespaces/other/runs/r"
    assert _names.short_id("namespaces/other/runs/r") == "r"
    assert _names.namespace_of("namespaces/other/runs/r") == "other"
    assert _names.namespace_of("r") == ""


@pytest.mark.parametrize("bad", ["", "namespaces/x/pipelines/etl", "namespaces/x/runs", "a/b"])
def test_malformed_run_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        _names.run_name("default", bad)


def test_a_malformed_id_names_the_argument_it_came_from() -> None:
    with pytest.raises(InvalidArgument, match=r"^name: '\.\./x' is not a run id \(ids have no '/'\)"):
        _names.run_name("default", "../x")
    with pytest.raises(InvalidArgument, match=r"^run: 'a/b' is not a run id"):
        _names.run_name("default", "a/b", "run")
    with pytest.raises(InvalidArgument, match=r"^pipeline: a pipeline name is required"):
        _names.pipeline_name("default", "", "pipeline")


async def test_the_client_names_the_argument_before_any_call() -> None:
    # Nothing listens on port 1: the check happens before a call is made.
    async with await weft.AsyncClient.connect("127.0.0.1:1") as client:
        with pytest.raises(InvalidArgument, match=r"^name: '\.\./x' is not a run id"):
            await client.get_run("../x")
        with pytest.raises(InvalidArgument, match=r"^run: '\.\./x' is not a run id"):
            await client.explain_step("../x", "a")
