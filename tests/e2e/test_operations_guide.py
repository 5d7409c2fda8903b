"""docs/operations.md stays true: its alert rules load in Prometheus, it lists every metric
weft defines, and the README links it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import weft_core.metrics  # noqa: F401 - registers weft's metrics

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operations.md"


def yaml_block_after(heading: str) -> str:
    text = GUIDE.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, f"no yaml block after {heading!r}"
    return match.group(1)


def test_the_example_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; ./dev need_cluster_tools)")
    rules = tmp_path / "weft-rules.yaml"
    rules.write_text(yaml_block_after("### Alerts worth having"))

    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_guide_lists_every_metric_weft_defines() -> None:
    text = GUIDE.read_text()
    # Families by name (a counter's without its _total suffix), from the process's registry.
    defined = {family.name for family in REGISTRY.collect() if family.name.startswith(("weft_", "grpc_server_"))}
    assert len(defined) > 15
    for name in sorted(defined):
        assert name in text, f"{name} is not in docs/operations.md"


def test_every_metric_in_the_guides_table_exists() -> None:
    text = GUIDE.read_text()
    section = text[text.index("## Metrics") : text.index("### Alerts worth having")]
    # The first column of each row: `name`, or several `name`s separated by commas.
    rows = re.findall(r"^\| (`[^|]*`) \|", section, re.MULTILINE)
    documented = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
    # Counters are collected under their name without the _total suffix.
    defined = {family.name for family in REGISTRY.collect()}
    assert len(documented) > 15
    for name in sorted(documented):
        assert name.removesuffix("_total") in defined, f"docs/operations.md lists {name}, which weft does not define"


def test_the_readme_links_the_guide() -> None:
    assert "(docs/operations.md)" in (REPO / "README.md").read_text()
