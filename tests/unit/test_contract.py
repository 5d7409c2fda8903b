"""The contract stays honest: generated code is fresh and buf lint passes."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "sdk" / "python" / "src" / "weft" / "v1"


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    generator = ROOT / "scripts" / "genproto.py"
    subprocess.run([sys.executable, str(generator), str(tmp_path)], check=True, capture_output=True)
    fresh = tmp_path / "weft" / "v1"
    committed = sorted(p.name for p in GENERATED.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    regenerated = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert committed == regenerated, "generated files differ in name: run ./dev protos and commit"
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, fresh, regenerated, shallow=False)
    assert not errors, f"unreadable generated files {errors}"
    assert not mismatch, f"stale generated code {mismatch}: run ./dev protos and commit"


def test_buf_lint_passes() -> None:
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        if shutil.which("npm") is None:
            pytest.fail("buf is not installed and npm is missing: run ./dev setup")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, capture_output=True)
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
