"""Prints the third-party requirements of weft's packages, one a line (for the Dockerfile).

    python scripts/third_party_requirements.py [ROOT]

Reads every `pyproject.toml` under ROOT (default: the current directory) and prints the
dependencies that are not weft's own packages, sorted, so the image can build their wheels
in a layer that only a change of a pyproject or a pin invalidates. Reads files only.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

OWN = frozenset({"weft", "weft-core", "weft-api", "weft-executor", "weft-tracer"})


def third_party_requirements(root: Path) -> list[str]:
    found: set[str] = set()
    for path in sorted(root.glob("**/pyproject.toml")):
        if any(part in {".venv", "node_modules"} for part in path.parts):
            continue
        found.update(tomllib.loads(path.read_text()).get("project", {}).get("dependencies", []))
    return sorted(found - OWN)


if __name__ == "__main__":
    print("\n".join(third_party_requirements(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))))
