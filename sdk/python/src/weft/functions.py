"""Python functions as pipeline steps: `@weft.function`.

    @weft.function(image="python:3.12-slim", outputs="stats")
    def summarise(orders: Path, shard: int) -> dict:
        ...

    with weft.Pipeline("etl") as p:
        rows = p.parameter("rows", default="1000")
        orders = generate(rows=rows)
        shards = [summarise.named(f"summarise-{i}")(orders=orders, shard=i) for i in range(3)]
        report(parts=shards)

Calling a function inside `with weft.Pipeline(...)` adds a step and returns references to
its outputs (an `OutputRef`, or a `FunctionOutputs` for a NamedTuple or dataclass return
type); `f.local(...)` runs it here, through the same serialisation, for unit tests.

A function step is an ordinary container step: its command is `python3 -c BOOTSTRAP`, and
two literal inputs carry the standard-library runner (`weft._runner`, compressed) and the
function's manifest (its normalised source, parameter and output kinds, requirements).
Since literals are hashed by content, the step's DNA covers the function's source, the
runner's protocol and the requirements, and nothing else about where the function lives:
the same code in another module has the same DNA, and a comment or docstring edit does not
change it (the source is normalised through the AST). The function must be
self-contained: it imports what it uses inside its body (the runner provides `Path`,
`NamedTuple`, `dataclass`, `field`, `dataclasses` and `typing`), and it cannot use variables of an enclosing
function. Argument and return types are checked when the function is decorated and when
it is called in a pipeline, so a type the protocol cannot carry is refused before
anything is submitted. This module never talks to the network.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import dataclasses
import functools
import inspect
import json
import pathlib
import shutil
import tempfile
import textwrap
import types
import typing
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from weft import _runner
from weft.pipeline import (
    Cache,
    LiteralValue,
    OutputRef,
    ParamRef,
    Retry,
    Seconds,
    SecretRef,
    StepHandle,
    current_pipeline,
)

__all__ = ["Function", "FunctionOutputs", "function"]

P = ParamSpec("P")
R = TypeVar("R")

#: The image of a function step when the decorator names none.
DEFAULT_IMAGE = "python:3.12-slim"
#: The output of a function with a single return value, unless `outputs=` names it.
DEFAULT_OUTPUT = "result"
SUPPORTED_TYPES = (
    "str, int, float, bool, None, list, dict (JSON-serialisable), bytes, pathlib.Path, "
    "T | None of int/float/bool/list/dict, list[T] of references; "
    "returns may also be a NamedTuple or dataclass of those"
)

_SCALARS: dict[Any, str] = {
    str: "text",
    int: "int",
    float: "float",
    bool: "bool",
    bytes: "bytes",
    list: "list",
    dict: "dict",
    type(None): "none",
    pathlib.Path: "path",
    pathlib.PurePath: "path",
}


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one value travels: its encoding, whether it may be None, and for a list its items."""

    kind: str
    nullable: bool = False
    item: str | None = None


def _kind_of(annotation: Any, what: str) -> _Kind:
    """The kind of an annotation, or TypeError naming `what` and the supported types."""
    if annotation in _SCALARS:
        return _Kind(_SCALARS[annotation])
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (list, dict):
        item: str | None = None
        if origin is list and arguments:
            # list[Any] is a JSON list; only items of a supported type can fan in one by one.
            with contextlib.suppress(TypeError):
                item = _kind_of(arguments[0], f"{what} (its items)").kind
        return _Kind(_SCALARS[origin], item=item)
    if origin in (typing.Union, types.UnionType) and len(arguments) == 2 and type(None) in arguments:
        inner = _kind_of(next(a for a in arguments if a is not type(None)), what)
        if inner.kind in ("int", "float", "bool", "list", "dict"):
            return _Kind(inner.kind, nullable=True, item=inner.item)
    shown = getattr(annotation, "__name__", None) or repr(annotation)
    if annotation is inspect.Parameter.empty:
        raise TypeError(f"{what} has no type annotation; annotate it with one of: {SUPPORTED_TYPES}")
    raise TypeError(f"{what} is annotated {shown}, which a function step cannot carry; use one of: {SUPPORTED_TYPES}")


def _fields_of(annotation: Any) -> list[tuple[str, Any]] | None:
    """(name, type) of each field of a NamedTuple or dataclass type, else None."""
    if isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields"):
        hints = typing.get_type_hints(annotation)
        return [(name, hints.get(name, inspect.Parameter.empty)) for name in annotation._fields]
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        return [(f.name, hints.get(f.name, inspect.Parameter.empty)) for f in dataclasses.fields(annotation)]
    return None


def _strip_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
    body = node.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        node.body = body[1:] or [ast.Pass()]


def _definition_source(obj: Any, *, keep_decorators: bool) -> str:
    """The normalised source of a function or class: no comments, docstring, or (for the
    function) decorators, formatted by `ast.unparse`, so only the code decides its DNA."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        raise TypeError(
            f"weft.function needs the source of {obj.__qualname__}; define it in a file or a notebook cell "
            "(not at an interactive prompt without source)"
        ) from None
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        raise TypeError(f"cannot find the definition of {obj.__qualname__} in its source")
    if isinstance(node, ast.AsyncFunctionDef):
        raise TypeError(f"{obj.__qualname__} is async; a function step must be a plain def")
    if not keep_decorators:
        node.decorator_list = []
    _strip_docstring(node)
    return ast.unparse(node)


def compact_runner_source() -> str:
    """The runner's code without docstrings, comments or blank lines.

    Lines are dropped by their positions in the file rather than re-rendered from the
    AST, so the result (and every function step's DNA) is the same whatever Python
    version builds the pipeline. The runner has no multi-line strings besides docstrings,
    so dropping blank lines cannot change a value (a unit test compiles the result).
    """
    source = Path(_runner.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    dropped: set[int] = set()
    replaced: dict[int, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            dropped.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
            if not isinstance(node, ast.Module) and len(node.body) == 1:
                replaced[first.lineno] = " " * first.col_offset + "pass"
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        if number in replaced:
            lines.append(replaced[number])
        elif number not in dropped and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    return "\n".join(lines) + "\n"


@functools.cache
def runner_literal() -> str:
    """The runner as the `weft.runner` literal: its compact code, compressed, in base64
    (about 5.7 KB, stored with every function step of a spec)."""
    return base64.b64encode(zlib.compress(compact_runner_source().encode("utf-8"), 9)).decode("ascii")


def _step_name(function_name: str) -> str:
    name = "".join(c if c.isalnum() else "-" for c in function_name.lower()).strip("-")
    while "--" in name:
        name = name.replace("--", "-")
    return name[:63].strip("-") or "function"


class FunctionOutputs:
    """References to the outputs of a function step whose return type has several fields.

    Read them as attributes (`split.train`), by name (`split["train"]`) or by unpacking
    (`train, test = split`).
    """

    def __init__(self, step: str, names: Sequence[str]) -> None:
        self._step = step
        self._names = tuple(names)

    @property
    def step(self) -> str:
        """The step's name."""
        return self._step

    def __getattr__(self, name: str) -> OutputRef:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(f"step {self._step!r} has no output {name!r} (its outputs: {', '.join(self._names)})")
        return OutputRef(self._step, name)

    def __getitem__(self, name: str) -> OutputRef:
        if name not in self._names:
            raise KeyError(f"step {self._step!r} has no output {name!r} (its outputs: {', '.join(self._names)})")
        return OutputRef(self._step, name)

    def __iter__(self) -> Iterator[OutputRef]:
        return (OutputRef(self._step, name) for name in self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"FunctionOutputs({self._step!r}: {', '.join(self._names)})"


class Function(Generic[P, R]):
    """A Python function that becomes a step when called inside a pipeline builder.

    Made by `@weft.function`; see the module docstring.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        image: str,
        outputs: str | Sequence[str] | None,
        cache: Cache | bool | None,
        retry: Retry | int | None,
        timeout: Seconds | None,
        requirements: Sequence[str],
        env: Mapping[str, str | SecretRef] | None,
        requests: Mapping[str, str] | None,
        limits: Mapping[str, str] | None,
        name: str | None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self._qualname = fn.__qualname__
        self._name = fn.__name__
        if fn.__code__.co_freevars:
            raise TypeError(
                f"{fn.__qualname__} uses variables of the function around it "
                f"({', '.join(fn.__code__.co_freevars)}); a step runs alone, so pass them as arguments"
            )
        self._fn = fn
        self.image = image
        self.cache = cache
        self.retry = retry
        self.timeout = timeout
        self.requirements = tuple(requirements)
        self.env = dict(env or {})
        self.requests = dict(requests or {})
        self.limits = dict(limits or {})
        self.step_name = name or _step_name(fn.__name__)
        self._signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        self._params: dict[str, _Kind] = {}
        for parameter in self._signature.parameters.values():
            what = f"parameter {parameter.name!r} of {fn.__qualname__}"
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise TypeError(f"{what}: *args and **kwargs cannot be step inputs; name each parameter")
            self._params[parameter.name] = _kind_of(hints.get(parameter.name, inspect.Parameter.empty), what)
        returns = hints.get("return", inspect.Parameter.empty)
        preamble: list[str] = []
        fields = _fields_of(returns)
        self._fields = fields is not None
        self._return_type = returns
        self._outputs: dict[str, _Kind] = {}
        if fields is not None:
            if outputs is not None:
                raise TypeError(
                    f"{fn.__qualname__} returns {returns.__name__}, whose fields name its outputs; drop outputs=..."
                )
            for field_name, annotation in fields:
                what = f"field {field_name!r} of {returns.__name__} (returned by {fn.__qualname__})"
                self._outputs[field_name] = _kind_of(annotation, what)
            preamble.append(_definition_source(returns, keep_decorators=True))
        elif returns is type(None) or returns is None:
            if outputs:
                raise TypeError(f"{fn.__qualname__} returns None, so it has no outputs; drop outputs=... or annotate")
        else:
            names = [outputs] if isinstance(outputs, str) else list(outputs or [DEFAULT_OUTPUT])
            if len(names) != 1:
                raise TypeError(
                    f"{fn.__qualname__} returns one value but outputs names {len(names)}; return a NamedTuple "
                    "or dataclass for several outputs"
                )
            self._outputs[names[0]] = _kind_of(returns, f"the return type of {fn.__qualname__}")
        self.source = _definition_source(fn, keep_decorators=False)
        self._manifest: dict[str, Any] = {
            "protocol": _runner.PROTOCOL,
            "name": fn.__name__,
            "source": self.source,
            "preamble": preamble,
            "params": [
                {"name": n, "kind": k.kind, **({"nullable": True} if k.nullable else {})}
                for n, k in self._params.items()
            ],
            "outputs": [
                {"name": n, "kind": k.kind, **({"nullable": True} if k.nullable else {})}
                for n, k in self._outputs.items()
            ],
            "fields": self._fields,
            "returns": getattr(returns, "__name__", ""),
            "requirements": sorted(self.requirements),
        }

    @property
    def outputs(self) -> list[str]:
        """The names of the step's outputs."""
        return list(self._outputs)

    def manifest(self, fan_in: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The manifest the runner reads; `fan_in` gives the item count of list arguments
        passed as references."""
        manifest = json.loads(json.dumps(self._manifest))
        for parameter in manifest["params"]:
            count = (fan_in or {}).get(parameter["name"])
            if count is not None:
                parameter["items"] = count
                parameter["item_kind"] = self._params[parameter["name"]].item
        return typing.cast(dict[str, Any], manifest)

    # In a pipeline ---------------------------------------------------------------------

    # Arguments are typed Any: a step takes references (p.parameter(...), other steps'
    # outputs) where the function itself takes values.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Adds this function as a step of the pipeline being built; returns its outputs.

        Returns:
            An `OutputRef` for a single output, a `FunctionOutputs` for several, None for none.

        Raises:
            RuntimeError: Not inside `with weft.Pipeline(...)`.
            TypeError: An argument does not match its parameter's type.
        """
        return self._add(None, args, kwargs)

    def named(self, step: str) -> Callable[..., Any]:
        """The same function, added under the step name `step` (e.g. "transform-0")."""

        def add(*args: Any, **kwargs: Any) -> Any:
            return self._add(step, args, kwargs)

        return add

    def _add(self, step: str | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        pipeline = current_pipeline()
        if pipeline is None:
            raise RuntimeError(
                f"{self._qualname} is a weft function: call it inside `with weft.Pipeline(...) as p:` to add "
                f"a step, or {self._name}.local(...) to run it here"
            )
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self._qualname}: {error}") from None
        name = step or pipeline.unique_step_name(self.step_name)
        inputs: dict[str, ParamRef | OutputRef | LiteralValue] = {}
        fan_in: dict[str, int] = {}
        for parameter, value in bound.arguments.items():
            kind = self._params[parameter]
            what = f"argument {parameter!r} of {name}"
            if isinstance(value, list | tuple) and any(_is_reference(v) for v in value):
                if kind.item is None:
                    raise TypeError(
                        f"{what} is a list of step outputs; annotate the parameter as list[T] "
                        "(e.g. list[dict]) so each item can be read"
                    )
                fan_in[parameter] = len(value)
                for index, item in enumerate(value):
                    inputs[f"{parameter}.{index}"] = _source(item, _Kind(kind.item), f"{what}[{index}]")
            else:
                inputs[parameter] = _source(value, kind, what)
        manifest = self.manifest(fan_in)
        inputs[_runner.RUNNER_INPUT] = LiteralValue(runner_literal())
        inputs[_runner.MANIFEST_INPUT] = LiteralValue(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
        handle = pipeline.step(
            name,
            image=self.image,
            command=["python3", "-c", _runner.BOOTSTRAP],
            env=self.env,
            requests=self.requests,
            limits=self.limits,
            inputs=inputs,
            outputs=list(self._outputs),
            cache=self.cache,
            retry=self.retry,
            timeout=self.timeout,
        )
        if not self._outputs:
            return None
        if self._fields:
            return FunctionOutputs(handle.name, list(self._outputs))
        return handle.output(next(iter(self._outputs)))

    # Here --------------------------------------------------------------------------------

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function in this process, through the serialisation a step uses.

        Arguments are written as the step's input files and read back, the shipped
        (normalised) source runs in a fresh namespace and a scratch working directory,
        and the outputs are written and read back: what fails here fails in a step.
        A `Path` result is a file (or directory) in a new temporary directory that is
        left for the caller.

        Raises:
            TypeError: An argument or the return value does not match the declared types.
            Exception: Whatever the function raises.
        """
        bound = self._signature.bind(*args, **kwargs)
        manifest = self.manifest({n: len(v) for n, v in bound.arguments.items() if self._params[n].item is not None})
        function = _runner.load_function(manifest)
        keep = Path(tempfile.mkdtemp(prefix=f"weft-local-{self.step_name}-"))
        work = Path(tempfile.mkdtemp(prefix="weft-local-"))
        try:
            inputs, outputs = work / "inputs", keep / "outputs"
            inputs.mkdir()
            outputs.mkdir()
            for parameter, value in bound.arguments.items():
                kind = self._params[parameter]
                try:
                    if kind.item is not None:
                        for index, item in enumerate(value):
                            _runner.write_value(kind.item, item, inputs / f"{parameter}.{index}", parameter)
                    else:
                        _runner.write_value(kind.kind, value, inputs / parameter, parameter, nullable=kind.nullable)
                except _runner.ProtocolError as error:
                    raise TypeError(f"{self._qualname}: argument {error}") from None
            try:
                _runner.invoke(manifest, function, inputs, outputs, reraise=True)
            except _runner.ProtocolError as error:
                raise TypeError(f"{self._qualname}: {error}") from None
            values = {
                name: _runner.read_value(kind.kind, outputs / name, keep, name, nullable=kind.nullable)
                for name, kind in self._outputs.items()
            }
        except BaseException:
            shutil.rmtree(keep, ignore_errors=True)  # no result will point into it
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not any(kind.kind == "path" for kind in self._outputs.values()):
            shutil.rmtree(keep, ignore_errors=True)  # nothing returned lives in it
        if not self._outputs:
            return typing.cast(R, None)
        if self._fields:
            return typing.cast(R, self._return_type(**values))
        return typing.cast(R, next(iter(values.values())))

    def __repr__(self) -> str:
        return f"weft.function({self._qualname} -> {', '.join(self._outputs) or 'no outputs'})"


def _is_reference(value: Any) -> bool:
    return isinstance(value, OutputRef | ParamRef | LiteralValue | StepHandle | FunctionOutputs)


def _source(value: Any, kind: _Kind, what: str) -> ParamRef | OutputRef | LiteralValue:
    """The input source of one argument: a reference as it is, a Python value as a literal."""
    if isinstance(value, OutputRef | ParamRef | LiteralValue):
        return value
    if isinstance(value, StepHandle):
        if len(value.outputs) != 1:
            raise TypeError(
                f"{what}: step {value.name!r} has {len(value.outputs)} outputs; pick one: step.output(NAME)"
            )
        return value.output(value.outputs[0])
    if isinstance(value, FunctionOutputs):
        raise TypeError(f"{what}: step {value.step!r} has several outputs; pick one, e.g. result.{value._names[0]}")
    if kind.kind == "path" or isinstance(value, pathlib.PurePath):
        raise TypeError(
            f"{what}: a local file cannot be a step's literal; produce it in an upstream step, "
            "pass its content as bytes or str, or give it as a run parameter"
        )
    try:
        _runner.check_value(kind.kind, value, what, nullable=kind.nullable)
    except _runner.ProtocolError as error:
        raise TypeError(str(error)) from None
    if kind.kind == "text":
        return LiteralValue(value)
    if kind.kind == "bytes":
        try:
            return LiteralValue(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            raise TypeError(f"{what}: a bytes literal must be UTF-8 text; produce binary data in a step") from None
    return LiteralValue(json.dumps(value, indent=2, sort_keys=True))


@overload
def function(fn: Callable[P, R], /) -> Function[P, R]: ...


@overload
def function(
    *,
    image: str = DEFAULT_IMAGE,
    outputs: str | Sequence[str] | None = None,
    cache: Cache | bool | None = None,
    retry: Retry | int | None = None,
    timeout: Seconds | None = None,
    requirements: Sequence[str] = (),
    env: Mapping[str, str | SecretRef] | None = None,
    requests: Mapping[str, str] | None = None,
    limits: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Callable[[Callable[P, R]], Function[P, R]]: ...


def function(
    fn: Callable[P, R] | None = None,
    /,
    *,
    image: str = DEFAULT_IMAGE,
    outputs: str | Sequence[str] | None = None,
    cache: Cache | bool | None = None,
    retry: Retry | int | None = None,
    timeout: Seconds | None = None,
    requirements: Sequence[str] = (),
    env: Mapping[str, str | SecretRef] | None = None,
    requests: Mapping[str, str] | None = None,
    limits: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Function[P, R] | Callable[[Callable[P, R]], Function[P, R]]:
    """Turns a plain function into a step factory (see the module docstring).

    Args:
        fn: The function (when used as a bare `@weft.function`).
        image: The image the step runs in; any image with `python3` (3.9 or later).
        outputs: The name of the single output (default "result"); a NamedTuple or
            dataclass return type names its outputs by its fields instead.
        cache: A `Cache` policy, or False to never reuse outcomes.
        retry: A `Retry` policy, or the total number of attempts.
        timeout: Limit for one attempt, in seconds or as a timedelta.
        requirements: pip requirements (`"pandas==2.2.3"`); installed on the local runtime
            into a virtualenv cached by their digest, expected in the image on Kubernetes.
        env: Environment variables of the step (part of the DNA unless secret).
        requests: Requested resources, e.g. {"cpu": "500m"}.
        limits: Resource limits, e.g. {"memory": "2Gi"}.
        name: The step's name (default: the function's, with '_' as '-').

    Raises:
        TypeError: A parameter or the return type has a type a step cannot carry (the
            message names it and lists the supported types), or the source is unavailable.
    """

    def decorate(target: Callable[P, R]) -> Function[P, R]:
        return Function(
            target,
            image=image,
            outputs=outputs,
            cache=cache,
            retry=retry,
            timeout=timeout,
            requirements=requirements,
            env=env,
            requests=requests,
            limits=limits,
            name=name,
        )

    return decorate(fn) if fn is not None else decorate
