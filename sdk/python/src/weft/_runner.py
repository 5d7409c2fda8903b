"""The runner of `@weft.function` steps: it calls a Python function inside a step.

This file is shipped to every function step as the literal input `weft.runner` (its
code, without comments or docstrings, zlib-compressed and base64-encoded) and run by the
step's `python3`, so it must use **only the standard library** and work on any Python
3.9+ image: no weft install is needed in the image. The SDK also imports it, so that
`Function.local()` serialises values exactly as a step does.

Protocol (version `PROTOCOL`): the input `weft.function.json` is the manifest written by
`weft.functions` (the function's normalised source, its parameters and outputs with their
kinds, its requirements). Each argument is the file `$WEFT_INPUTS/<parameter>` (a list of
references fans in as `<parameter>.0`, `<parameter>.1`, ...); each output is written to
`$WEFT_OUTPUTS/<output>`. Encodings by kind:

    text    str, as UTF-8 text (a run parameter feeds it unchanged)
    int, float, bool, list, dict, and `T | None` of those: JSON (`json.dumps(v, indent=2,
            sort_keys=True)` when written, so equal values give equal bytes)
    bytes   the raw bytes
    path    a file as itself; a directory as a deterministic tar (sorted entries, zero
            times and owners, pax header `weft.directory=1`), unpacked again for a reader

The function runs in a fresh scratch directory (its working directory), so relative paths
it writes land there and vanish after the outputs are stored. An exception prints the
traceback's last frames to stderr and ends with a line naming the exception, which is
what the step's failure message quotes. This module never imports weft or anything
outside the standard library, and never reads the network except through `pip` when a
function declares requirements on the local runtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import linecache
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

#: Version of the runner protocol (manifest shape and encodings); part of every function step's DNA.
PROTOCOL = 1
#: Input holding this runner (compressed) and input holding the manifest.
RUNNER_INPUT = "weft.runner"
MANIFEST_INPUT = "weft.function.json"
#: What a function step runs: decompress the runner from its input and execute it.
BOOTSTRAP = (
    "import base64,os,zlib;p=os.path.join(os.environ['WEFT_INPUTS'],'weft.runner');"
    "exec(compile(zlib.decompress(base64.b64decode(open(p,'rb').read())),p,'exec'))"
)
#: Pax header that marks a tar as a directory output (not a file that happens to be a tar).
DIRECTORY_HEADER = "weft.directory"
#: Traceback frames quoted when the function raises.
TRACEBACK_FRAMES = 3
JSON_KINDS = ("int", "float", "bool", "list", "dict", "none")
#: Names the function's source may use without importing them (the names its annotations
#: and return types usually need).
PROVIDED_NAMES = ("Path", "NamedTuple", "dataclass", "field", "dataclasses", "typing")


class FunctionFailed(Exception):
    """The function raised; the message is the exception's type and text."""


class ProtocolError(Exception):
    """An input or a return value does not match the function's declared types."""


# Encodings ------------------------------------------------------------------------------


def check_value(kind: str, value: Any, what: str, *, nullable: bool = False) -> None:
    """Raises ProtocolError unless `value` is of `kind` (what names it in the message)."""
    if value is None and (nullable or kind == "none"):
        return
    expected: dict[str, Any] = {
        "text": str,
        "int": int,
        "float": (int, float),
        "bool": bool,
        "list": list,
        "dict": dict,
        "bytes": (bytes, bytearray),
        "path": (str, os.PathLike),
        "none": type(None),
    }
    wanted = expected[kind]
    if kind in ("int", "float") and isinstance(value, bool):
        wanted = ()
    if not isinstance(value, wanted):
        raise ProtocolError(f"{what}: expected {describe(kind, nullable)}, got {type(value).__name__}")
    if kind in ("list", "dict"):
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as error:
            raise ProtocolError(f"{what}: a {kind} must be JSON-serialisable: {error}") from None


def describe(kind: str, nullable: bool = False) -> str:
    names = {"text": "str", "none": "None", "path": "a pathlib.Path", "bytes": "bytes"}
    name = names.get(kind, kind)
    return f"{name} or None" if nullable else name


def write_value(kind: str, value: Any, target: Path, what: str, *, nullable: bool = False) -> None:
    """Writes `value` to the file `target` in the encoding of `kind`."""
    check_value(kind, value, what, nullable=nullable)
    if kind == "text":
        target.write_bytes(str(value).encode("utf-8"))
    elif kind == "bytes":
        target.write_bytes(bytes(value))
    elif kind == "path":
        source = Path(value)
        if source.is_dir():
            archive_directory(source, target)
        elif source.is_file():
            shutil.copyfile(source, target)
        else:
            raise ProtocolError(f"{what}: {source} is neither a file nor a directory")
    else:
        target.write_text(json.dumps(value, indent=2, sort_keys=True), encoding="utf-8")


def read_value(kind: str, source: Path, scratch: Path, what: str, *, nullable: bool = False) -> Any:
    """Reads the file `source` in the encoding of `kind` (a directory is unpacked into `scratch`)."""
    if kind == "text":
        return source.read_bytes().decode("utf-8")
    if kind == "bytes":
        return source.read_bytes()
    if kind == "path":
        if is_directory_archive(source):
            target = scratch / source.name
            extract_directory(source, target)
            return target
        return source
    text = source.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except ValueError:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise ProtocolError(f"{what}: expected JSON for {describe(kind, nullable)}, got {shown!r}") from None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    check_value(kind, value, what, nullable=nullable)
    return value


def _normalised_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    executable = info.isdir() or bool(info.mode & 0o111)
    info.mode = 0o755 if executable else 0o644
    return info


def archive_directory(source: Path, target: Path) -> None:
    """A tar of `source` whose bytes depend only on the names and contents inside it."""
    entries = sorted(p for p in source.rglob("*") if p.is_dir() or p.is_file())
    header = {DIRECTORY_HEADER: "1"}
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT, pax_headers=header) as archive:
        for entry in entries:
            name = entry.relative_to(source).as_posix()
            info = _normalised_info(archive.gettarinfo(str(entry), arcname=name))
            if entry.is_file():
                with open(entry, "rb") as content:
                    archive.addfile(info, content)
            else:
                archive.addfile(info)


def is_directory_archive(source: Path) -> bool:
    """Whether `source` is a directory output written by `archive_directory`."""
    if not tarfile.is_tarfile(source):
        return False
    with tarfile.open(source, "r") as archive:
        return archive.pax_headers.get(DIRECTORY_HEADER) == "1"


def extract_directory(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source, "r") as archive:
        for member in archive.getmembers():
            # Only plain files and directories inside the target: an archive cannot write elsewhere.
            inside = (target / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not str(inside).startswith(str(target.resolve())):
                raise ProtocolError(f"{source.name}: unsafe archive entry {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
        else:  # Python < 3.11.4 has no filters; the entries were checked above
            archive.extractall(target)


# The function ---------------------------------------------------------------------------


def load_function(manifest: dict[str, Any]) -> Callable[..., Any]:
    """Defines the manifest's function (and its return type) in a fresh namespace."""
    name = manifest["name"]
    filename = f"<weft.function {name}>"
    source = "\n".join([*manifest.get("preamble", []), manifest["source"]]) + "\n"
    # Tracebacks show the source lines although no file holds them.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # A real module, because dataclasses look their module up in sys.modules.
    module = types.ModuleType(f"__weft_function_{name}__")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    namespace.update(
        {
            "Path": Path,
            "NamedTuple": NamedTuple,
            "dataclass": dataclasses.dataclass,
            "field": dataclasses.field,
            "dataclasses": dataclasses,
            "typing": __import__("typing"),
        }
    )
    # Annotations are never evaluated (PEP 563), so they need not be importable in the step.
    flags = __import__("__future__").annotations.compiler_flag
    exec(compile(source, filename, "exec", flags=flags, dont_inherit=True), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


def read_arguments(manifest: dict[str, Any], inputs: Path, scratch: Path) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for parameter in manifest["params"]:
        name, kind, nullable = parameter["name"], parameter["kind"], parameter.get("nullable", False)
        count = parameter.get("items")
        if count is not None:
            item_kind = parameter["item_kind"]
            arguments[name] = [
                read_value(item_kind, inputs / f"{name}.{i}", scratch, f"argument {name}[{i}]") for i in range(count)
            ]
        elif (inputs / name).exists():
            arguments[name] = read_value(kind, inputs / name, scratch, f"argument {name}", nullable=nullable)
    return arguments


def output_values(manifest: dict[str, Any], result: Any) -> dict[str, Any]:
    """The value of each declared output, taken from the function's return value."""
    outputs = manifest["outputs"]
    if not outputs:
        return {}
    if not manifest.get("fields"):
        return {outputs[0]["name"]: result}
    names = [o["name"] for o in outputs]
    if hasattr(result, "_asdict"):
        values = dict(result._asdict())
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        values = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, dict):
        values = dict(result)
    elif isinstance(result, tuple) and len(result) == len(names):
        values = dict(zip(names, result, strict=False))
    else:
        raise ProtocolError(
            f"{manifest['name']} returned a {type(result).__name__}; return its declared type "
            f"{manifest.get('returns', 'NamedTuple')} with fields {', '.join(names)}"
        )
    missing = [n for n in names if n not in values]
    if missing:
        raise ProtocolError(f"{manifest['name']} returned no value for output(s) {', '.join(missing)}")
    return {n: values[n] for n in names}


def invoke(
    manifest: dict[str, Any], function: Callable[..., Any], inputs: Path, outputs: Path, *, reraise: bool = False
) -> None:
    """Reads the arguments, calls the function in a scratch directory, writes the outputs.

    With `reraise` (in-process calls) the function's own exception propagates unchanged.

    Raises:
        FunctionFailed: The function raised (its traceback was printed to stderr).
        ProtocolError: An argument or the return value does not match the declared types.
    """
    scratch = Path(tempfile.mkdtemp(prefix="weft-function-"))
    previous = os.getcwd()
    try:
        arguments = read_arguments(manifest, inputs, scratch / "inputs")
        work = scratch / "work"
        work.mkdir()
        os.chdir(work)
        try:
            result = function(**arguments)
        except Exception as error:
            if reraise:
                raise
            # Start below this frame: the user's code is what the message must show.
            below = error.__traceback__.tb_next if error.__traceback__ is not None else None
            frames = traceback.format_exception(type(error), error, below, limit=-TRACEBACK_FRAMES)
            sys.stderr.write("".join(frames))
            summary = f"{type(error).__name__}: {error}"
            sys.stderr.write(f"weft: {manifest['name']} raised {summary}\n")
            raise FunctionFailed(summary) from error
        values = output_values(manifest, result)
        for output in manifest["outputs"]:
            value = values[output["name"]]
            write_value(
                output["kind"],
                value,
                outputs / output["name"],
                f"output {output['name']} of {manifest['name']}",
                nullable=output.get("nullable", False),
            )
    finally:
        os.chdir(previous)
        shutil.rmtree(scratch, ignore_errors=True)


# Requirements ---------------------------------------------------------------------------


def requirements_digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:32]


def _installed(requirement: str) -> bool:
    """Whether a requirement is met here (name installed; an `==` pin at that version)."""
    from importlib import metadata

    spec = requirement.split(";")[0].split("@")[0].strip()
    name, _, pinned = spec.partition("==")
    name = name.split("[")[0].strip()
    for operator in ("<", ">", "~", "!"):
        name = name.split(operator)[0].strip()
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return not pinned or version == pinned.strip()


def _pip_can_target() -> bool:
    from importlib import metadata

    try:
        version = tuple(int(part) for part in metadata.version("pip").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (22, 3)


def venv_root() -> Path:
    base = os.environ.get("WEFT_FUNCTION_CACHE")
    if base:
        return Path(base) / "venvs"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "weft" / "functions" / "venvs"


def ensure_requirements(requirements: list[str]) -> str:
    """The Python to run the function with: this one when the requirements are met,
    else that of a virtualenv keyed by their digest, created once (local runtime only).

    Raises:
        ProtocolError: They are missing and cannot be installed here (on Kubernetes they
            must be in the image).
    """
    if not requirements or os.environ.get("WEFT_FUNCTION_VENV") or all(_installed(r) for r in requirements):
        return sys.executable
    missing = [r for r in requirements if not _installed(r)]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ProtocolError(
            f"requirements not installed in the image: {', '.join(missing)}; on Kubernetes a function's "
            "requirements must be in its image (build one FROM the image with `pip install` of them)"
        )
    root = venv_root()
    venv = root / requirements_digest(requirements)
    python = venv / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / f"{venv.name}.lock", "w") as lock:
        # Two steps with the same requirements install them once: the second waits here.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "weft-complete").exists():
            sys.stderr.write(f"weft: reusing requirements in {venv}\n")
            return str(python)
        sys.stderr.write(f"weft: installing {', '.join(requirements)} into {venv}\n")
        shutil.rmtree(venv, ignore_errors=True)
        # This Python's pip installs into the new environment when it can (`--python`, pip
        # 22.3+): seeding the environment with its own pip takes most of the time.
        if _pip_can_target():
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, stdout=sys.stderr)
            pip = [sys.executable, "-m", "pip", "--python", str(python)]
        else:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
            pip = [str(python), "-m", "pip"]
        pip += ["install", "--disable-pip-version-check", "--no-input", "-q"]
        installed = subprocess.run([*pip, *requirements], stdout=sys.stderr)
        if installed.returncode != 0:
            raise ProtocolError(f"pip could not install {', '.join(requirements)} (exit code {installed.returncode})")
        (venv / "weft-complete").write_text("\n".join(requirements) + "\n")
    return str(python)


# Entry point ----------------------------------------------------------------------------


def main() -> int:
    inputs = Path(os.environ["WEFT_INPUTS"])
    outputs = Path(os.environ["WEFT_OUTPUTS"])
    manifest: dict[str, Any] = json.loads((inputs / MANIFEST_INPUT).read_text(encoding="utf-8"))
    try:
        if manifest.get("protocol") != PROTOCOL:
            raise ProtocolError(f"the manifest speaks protocol {manifest.get('protocol')}, this runner {PROTOCOL}")
        python = ensure_requirements(list(manifest.get("requirements", [])))
        if python != sys.executable:
            environment = dict(os.environ, WEFT_FUNCTION_VENV=python)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(python, [python, "-c", BOOTSTRAP], environment)
        invoke(manifest, load_function(manifest), inputs, outputs)
    except FunctionFailed:
        return 1
    except ProtocolError as error:
        sys.stderr.write(f"weft: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
