"""`@weft.function`: type checks at build time, the steps it adds, DNA stability, `.local()`.

The runs of function steps on a real executor are in tests/integration/authoring/.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import weft
from weft import _runner
from weft.functions import compact_runner_source, runner_literal


class Split(NamedTuple):
    train: list[int]
    test: list[int]


@dataclasses.dataclass
class Stats:
    count: int
    label: str


@weft.function
def echo_text(value: str) -> str:
    return value.upper()


@weft.function
def add(a: int, b: float, flag: bool = False) -> float:
    return a + b if not flag else -(a + b)


@weft.function
def maybe(value: int | None) -> dict[str, int] | None:
    return None if value is None else {"value": value}


@weft.function
def reverse_bytes(data: bytes) -> bytes:
    return data[::-1]


@weft.function
def split(values: list[int]) -> Split:
    half = len(values) // 2
    return Split(train=values[:half], test=values[half:])


@weft.function
def stats(rows: list[dict[str, Any]]) -> Stats:
    return Stats(count=len(rows), label="rows")


@weft.function(outputs="copy")
def copy_file(source: Path) -> Path:
    target = Path("copy.txt")
    target.write_bytes(source.read_bytes() + b"!")
    return target


@weft.function
def make_dir(files: int) -> Path:
    root = Path("tree")
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / "sub" / f"f{i}.txt").write_text(str(i))
    return root


@weft.function
def count_files(tree: Path) -> int:
    return sum(1 for p in tree.rglob("*") if p.is_file())


@weft.function
def boom(x: int) -> int:
    if x > 0:
        raise ValueError(f"x is {x}")
    return x


@weft.function
def uses_a_module_global(x: int) -> int:
    return x + len(sys.argv)


def test_every_supported_type_round_trips_through_local() -> None:
    assert echo_text.local("abc") == "ABC"
    assert add.local(1, 2.5) == 3.5
    assert add.local(1, 2, flag=True) == -3.0
    assert maybe.local(None) is None
    assert maybe.local(4) == {"value": 4}
    assert reverse_bytes.local(b"\x00\x01\xff") == b"\xff\x01\x00"
    assert split.local([1, 2, 3, 4]) == Split(train=[1, 2], test=[3, 4])
    assert stats.local([{"a": 1}, {"b": 2}]) == Stats(count=2, label="rows")


def test_paths_round_trip_as_files_and_directories(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"hello")
    copied = copy_file.local(source)
    assert copied.read_bytes() == b"hello!"
    tree = make_dir.local(3)
    assert tree.is_dir()
    assert sorted(p.name for p in tree.rglob("*.txt")) == ["f0.txt", "f1.txt", "f2.txt"]
    assert count_files.local(tree) == 3
    # A file result is <dir>/outputs/<name>, a directory result <dir>/<name>.
    for result in (copied.parent.parent, tree.parent):
        assert result.name.startswith("weft-local-"), result  # never remove anything else
        shutil.rmtree(result)


def test_a_directory_archive_depends_only_on_names_and_contents(tmp_path: Path) -> None:
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "x.txt").write_text("x")
        (root / "y.txt").write_text("y")
    os.utime(tmp_path / "b" / "y.txt", (1, 1))
    _runner.archive_directory(tmp_path / "a", tmp_path / "a.tar")
    _runner.archive_directory(tmp_path / "b", tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert _runner.is_directory_archive(tmp_path / "a.tar")
    assert not _runner.is_directory_archive(tmp_path / "a" / "y.txt")


def test_local_raises_the_functions_own_exception() -> None:
    with pytest.raises(ValueError, match="x is 3"):
        boom.local(3)


def test_local_runs_the_shipped_source_so_a_missing_import_fails_here() -> None:
    # `sys` is imported by this module, not by the function: a step would not have it.
    with pytest.raises(NameError, match="sys"):
        uses_a_module_global.local(1)


def test_local_checks_argument_and_return_types() -> None:
    with pytest.raises(TypeError, match="expected int, got str"):
        add.local("1", 2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(x: set) -> int:\n    return 1\n", "parameter 'x' of f is annotated set"),
        ("def f(x) -> int:\n    return 1\n", "parameter 'x' of f has no type annotation"),
        ("def f(x: int) -> complex:\n    return 1j\n", "the return type of f is annotated complex"),
        ("def f(*xs: int) -> int:\n    return 1\n", r"parameter 'xs' of f: \*args and \*\*kwargs"),
        ("def f(x: str | None) -> int:\n    return 1\n", "parameter 'x' of f is annotated"),
    ],
)
def test_unsupported_annotations_are_refused_at_build_time_naming_the_parameter(
    tmp_path: Path, source: str, message: str
) -> None:
    module = _module_from(tmp_path, "bad_types", source)
    with pytest.raises(TypeError, match=message) as error:
        weft.function(module.f)
    if "args" not in message:
        assert "str, int, float, bool, None" in str(error.value)


def _module_from(tmp_path: Path, name: str, source: str) -> Any:
    path = tmp_path / f"{name}.py"
    path.write_text("from __future__ import annotations\n" + source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_inputs(function: weft.Function[..., object]) -> dict[str, str]:
    with weft.Pipeline("p") as p:
        function(x=1)
    return {i.name: i.literal for i in p.spec().steps[0].inputs}


def test_the_same_code_in_another_module_or_with_new_comments_has_the_same_step(tmp_path: Path) -> None:
    first = _module_from(
        tmp_path,
        "first",
        "import weft\n\n@weft.function\ndef f(x: int) -> int:\n    return x + 1\n",
    )
    second = _module_from(
        tmp_path,
        "second",
        "import weft\nimport os\n\n\nclass Holder:\n    pass\n\n"
        '@weft.function(image="python:3.12-slim")\n'
        'def f(x: int) -> int:  # a comment\n    """A docstring."""\n    # adds one\n    return (x + 1)\n',
    )
    edited = _module_from(
        tmp_path, "edited", "import weft\n\n@weft.function\ndef f(x: int) -> int:\n    return x + 2\n"
    )
    assert _function_inputs(first.f) == _function_inputs(second.f)
    assert _function_inputs(first.f) != _function_inputs(edited.f)


def test_calling_inside_a_pipeline_adds_a_step_and_returns_references() -> None:
    with weft.Pipeline("etl") as p:
        values = p.parameter("values", default="[1, 2, 3, 4]")
        halves = split(values=values)
        first = stats.named("count-train")(rows=[halves.train, halves.test])
        second = stats(rows=[{"a": 1}])
        third = stats(rows=[])
    assert [s.name for s in p.steps] == ["split", "count-train", "stats", "stats-2"]
    assert isinstance(halves, weft.FunctionOutputs)
    assert list(halves) == [weft.OutputRef("split", "train"), weft.OutputRef("split", "test")]
    assert isinstance(first, weft.FunctionOutputs)
    assert first.count == weft.OutputRef("count-train", "count")
    assert second.step == "stats"
    assert third.step == "stats-2"
    spec = p.spec()
    step = spec.steps[1]
    assert step.container.command == ["python3", "-c", _runner.BOOTSTRAP]
    assert step.container.image == "python:3.12-slim"
    inputs = {i.name: i for i in step.inputs}
    assert inputs["rows.0"].step_output.step == "split"
    assert inputs["rows.0"].step_output.output == "train"
    assert inputs["rows.1"].step_output.output == "test"
    manifest = json.loads(inputs[_runner.MANIFEST_INPUT].literal)
    assert manifest["params"] == [{"name": "rows", "kind": "list", "items": 2, "item_kind": "dict"}]
    assert [o.name for o in step.outputs] == ["count", "label"]
    # A plain list is one JSON literal; parameters pass through as parameters.
    assert {i.name: i.literal for i in spec.steps[2].inputs}["rows"] == json.dumps([{"a": 1}], indent=2)
    assert spec.steps[0].inputs[0].parameter == "values"


def test_arguments_are_type_checked_when_the_step_is_added() -> None:
    with weft.Pipeline("p"), pytest.raises(TypeError, match="argument 'a' of add: expected int, got str"):
        add(a="1", b=2.0)
    with weft.Pipeline("p"), pytest.raises(TypeError, match="a local file cannot be a step's literal"):
        copy_file(source=Path("/etc/hostname"))
    with weft.Pipeline("p"), pytest.raises(TypeError, match="missing a required argument: 'b'"):
        add(a=1)


def test_calling_outside_a_pipeline_says_how_to_use_it() -> None:
    with pytest.raises(RuntimeError, match=r"inside `with weft.Pipeline\(...\) as p:`.*add.local"):
        add(1, 2.0)


def test_the_runner_is_shipped_compact_and_still_compiles() -> None:
    # The literal is stored with every function step of a spec: keep it compact.
    assert len(runner_literal()) < 6 * 1024
    source = zlib.decompress(base64.b64decode(runner_literal())).decode()
    assert source == compact_runner_source()
    assert '"""' not in source
    assert "\n#" not in source
    compile(source, "weft.runner", "exec")
    namespace: dict[str, Any] = {"__name__": "weft.runner"}
    exec(compile(source, "weft.runner", "exec"), namespace)
    assert namespace["PROTOCOL"] == _runner.PROTOCOL == 1


def test_import_weft_does_not_load_the_function_machinery() -> None:
    # `import weft` must stay fast: weft.functions (ast, the runner, tarfile) loads on first use.
    code = "import sys, weft; assert 'weft.functions' not in sys.modules; weft.function; print('ok')"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "ok"


def test_requirements_already_installed_are_used_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_FUNCTION_CACHE", str(tmp_path))
    from importlib import metadata

    pinned = f"PyYAML=={metadata.version('PyYAML')}"
    assert _runner.ensure_requirements([pinned, "grpcio"]) == sys.executable
    assert not (tmp_path / "venvs").exists()  # nothing was installed


def test_missing_requirements_on_kubernetes_fail_clearly_instead_of_installing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pod has KUBERNETES_SERVICE_HOST (the kubelet sets it): there, requirements
    # belong in the image and the runner never reaches for PyPI.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("WEFT_FUNCTION_CACHE", str(tmp_path))
    with pytest.raises(_runner.ProtocolError, match=r"requirements not installed in the image: weft-absent==1\.0;"):
        _runner.ensure_requirements(["weft-absent==1.0", "grpcio"])
    assert not (tmp_path / "venvs").exists()


def test_local_leaves_a_directory_only_for_path_results() -> None:
    import tempfile

    def leftovers() -> set[str]:
        return {p.name for p in Path(tempfile.gettempdir()).glob("weft-local-*")}

    before = leftovers()
    assert echo_text.local("x") == "X"
    assert leftovers() == before
    copied = copy_file.local(Path(__file__))
    assert copied.exists()
    assert leftovers() - before
    owned = copied.parent.parent  # <dir>/outputs/<name>: the caller owns <dir>
    assert owned.name.startswith("weft-local-"), owned  # never remove anything else
    shutil.rmtree(owned)


def test_use_adds_a_step_whose_used_steps_can_be_read() -> None:
    version = "sha256:" + "a" * 64
    with weft.Pipeline("parent") as p:
        sub = p.use("normalise", version=version, inputs={"raw": p.parameter("raw", default="x")})
        add(a=1, b=sub.output("clean", "out"))
    spec = p.spec()
    assert spec.steps[0].pipeline.name == "normalise"
    assert spec.steps[0].pipeline.version == version
    assert spec.steps[0].inputs[0].parameter == "raw"
    read = {i.name: i for i in spec.steps[1].inputs}["b"]
    assert (read.step_output.step, read.step_output.output) == ("normalise.clean", "out")
    assert repr(sub) == "SubPipeline('normalise': normalise @ sha256:aaaaaaaaaaaa…)"
    with pytest.raises(ValueError, match="pin a version"):
        p.use("other", version="")
    with pytest.raises(ValueError, match="defined twice"):
        p.use("normalise", version=version)


def test_an_expanded_pipeline_file_with_its_uses_loads_back() -> None:
    # What `weft pipelines get -o yaml` prints for a pipeline that uses another one.
    version = "sha256:" + "b" * 64
    text = f"""
name: parent
spec:
  steps:
    - name: normalise.clean
      container: {{image: busybox, command: [sh, -c, "true"]}}
      outputs: [{{name: out}}]
  uses:
    - {{step: normalise, pipeline: {{name: normalise, version: "{version}"}}}}
"""
    spec = weft.loads_pipeline(text).spec()
    assert [u.pipeline.version for u in spec.uses] == [version]
    bare = weft.loads_pipeline(text.replace("spec:\n", "").replace("\n  ", "\n"), name="parent").spec()
    assert bare == spec
