"""Generate the Python stubs of the weft.v1 contract into the SDK.

The output is committed; `tests/unit/test_generated_fresh.py` runs this into a temporary
directory and fails when it differs from what is committed, so a proto edit without a
regeneration cannot land.

Usage: python scripts/genproto.py [OUT_DIR]   (default: sdk/python/src)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DEFAULT_OUT = ROOT / "sdk" / "python" / "src"


def generate(out_dir: Path) -> list[Path]:
    """Write `weft/v1/*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` under `out_dir`."""
    protos = sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "weft" / "v1").glob("*.proto"))
    package_dir = out_dir / "weft" / "v1"
    package_dir.mkdir(parents=True, exist_ok=True)
    for stale in package_dir.glob("*_pb2*.py*"):
        stale.unlink()
    well_known = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    init = package_dir / "__init__.py"
    init.write_text('"""Generated weft.v1 stubs (scripts/genproto.py); do not edit."""\n')
    return sorted(package_dir.iterdir())


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out) if path.is_relative_to(out) else path)
