"""Functions used by the function-step tests, in a module of their own.

`moved_module.py` holds `shout` again, unchanged apart from comments and layout: a
function moved to another file must keep its DNA.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import weft


class Parts(NamedTuple):
    head: str
    tail: list[int]


@dataclasses.dataclass
class Summary:
    total: float
    flags: dict[str, Any]


@weft.function(outputs="text")
def shout(word: str) -> str:
    return word.upper() + "!"


@weft.function(outputs="n")
def length(text: str) -> int:
    return len(text)


@weft.function
def produce(count: int, ratio: float, enabled: bool, missing: int | None) -> Parts:
    return Parts(head=f"c={count} r={ratio} e={enabled} m={missing}", tail=list(range(count)))


@weft.function
def blob(size: int) -> bytes:
    return bytes(range(size))


@weft.function(outputs="tree")
def tree(files: int) -> Path:
    root = Path("tree")
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / "sub" / f"{i}.txt").write_text(f"file {i}\n")
    return root


@weft.function(outputs="file")
def one_file(text: str) -> Path:
    path = Path("out.txt")
    path.write_text(text)
    return path


@weft.function
def consume(head: str, tail: list[int], data: bytes, tree: Path, file: Path, nothing: dict[str, Any] | None) -> Summary:
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    return Summary(
        total=float(sum(tail)) + len(data),
        flags={"head": head, "files": files, "file": file.read_text(), "nothing": nothing, "data": list(data)},
    )


@weft.function
def total_of(parts: list[float]) -> float:
    return sum(parts)


@weft.function
def fails(depth: int) -> int:
    def dive(level: int) -> int:
        if level == 0:
            raise ValueError(f"no data for shard {depth}")
        return dive(level - 1)

    return dive(depth)
