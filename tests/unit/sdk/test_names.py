"""Short ids and full resource names both reach the API as full names."""

from __future__ import annotations

import pytest

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
