"""The README's function pipeline and `python examples/etl_functions.py` run as written.

Both are run as real Python processes against a real weft-api and executor (the harness),
with only the client's target changed to the test's api.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.integration.executor.support import Harness

ROOT = Path(__file__).resolve().parents[3]


def readme_function_pipeline() -> str:
    """The first Python block of the README's "A pipeline in Python" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A pipeline in Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Python section has no python block"
    return match.group(1)


async def python(*argv: str, timeout: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_the_readme_function_pipeline_runs_as_written(harness: Harness, tmp_path: Path) -> None:
    h = harness
    await h.start_executor()
    code = readme_function_pipeline()
    assert code.count("weft.Client.connect()") == 1
    script = tmp_path / "readme_pipeline.py"
    script.write_text(code.replace("weft.Client.connect()", f"weft.Client.connect({h.api_address!r})"))

    shown = await python(str(script))

    assert re.search(r"Applied\(shards @ sha256:[0-9a-f]{6}…, created\)", shown), shown
    assert re.search(r"Run\(shards-\w+, SUCCEEDED, 5 steps\)", shown), shown
    assert re.search(r"shard 0: \d+ orders, \d+\.\d\d\nshard 1: .*\nshard 2: ", shown), shown


async def test_the_python_etl_example_runs_from_the_command_line(harness: Harness) -> None:
    h = harness
    await h.start_executor()

    shown = await python(str(ROOT / "examples" / "etl_functions.py"), "--target", h.api_address, "--rows", "300")

    assert "Applied(etl-py @ sha256:" in shown
    assert re.search(r"Run\(etl-py-\w+, SUCCEEDED, 6 steps\)", shown), shown
    assert "Orders by region (300 generated)" in shown
