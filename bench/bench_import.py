"""How long `import weft` takes, beside the same import of a baseline git ref.

    .venv/bin/python bench/bench_import.py [--rounds 9] [--baseline main]

Each round imports weft in a fresh interpreter and times the import alone (not the
interpreter's start), alternating between this tree and the baseline. The baseline is
the SDK of `--baseline` (default `main`), taken with
`git archive` into a temporary directory and put first on PYTHONPATH, so both are
measured on the same machine in the same invocation. `weft.functions` (the
`@weft.function` machinery) is loaded on first use, not by `import weft`: the bench also
prints what that first use costs. The budget
for `import weft` is 300 ms. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 0.3
TIMED_IMPORT = "import time; t = time.perf_counter(); import weft; print(time.perf_counter() - t)"
#: The first use of `@weft.function`, which loads weft.functions and the runner on demand.
TIMED_FIRST_USE = "import weft, time; t = time.perf_counter(); weft.function; print(time.perf_counter() - t)"


def import_seconds(rounds: int, pythonpath: str | None, code: str = TIMED_IMPORT) -> list[float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    times = []
    for _ in range(rounds):
        shown = subprocess.run(
            [sys.executable, "-c", TIMED_IMPORT], capture_output=True, text=True, env=env, check=True
        )
        times.append(float(shown.stdout.strip()))
    return times


def baseline_tree(ref: str, into: Path) -> str | None:
    """The SDK sources of git `ref`, unpacked under `into`, or None if git cannot give them."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "sdk/python/src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into / "sdk" / "python" / "src")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="fresh interpreters per tree (default: %(default)s)")
    parser.add_argument("--baseline", default="main", help="git ref to compare with (default: %(default)s)")
    args = parser.parse_args()
    here_times: list[float] = []
    base_times: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        path = baseline_tree(args.baseline, Path(scratch))
        # Alternate the trees round by round, so a change in the machine's load hits both alike.
        for _ in range(args.rounds):
            here_times += import_seconds(1, None)
            if path:
                base_times += import_seconds(1, path)
    here = statistics.median(here_times)
    base = statistics.median(base_times) if base_times else None
    verdict = "within" if here < BUDGET_SECONDS else "OVER"
    print(
        f"import weft: median {here * 1000:.0f} ms over {args.rounds} fresh interpreters ({verdict} the 300 ms budget)"
    )
    if base is not None:
        print(f"baseline {args.baseline}: median {base * 1000:.0f} ms; this tree / baseline = {here / base:.2f}")
    else:
        print(f"baseline {args.baseline}: not available (git archive failed)")
    first_use = statistics.median(import_seconds(args.rounds, None, TIMED_FIRST_USE))
    print(f"first use of weft.function (loads weft.functions and the runner): median {first_use * 1000:.0f} ms more")


if __name__ == "__main__":
    main()
