"""The SDK's public surface: the names `weft` exports, and the sync face matching the async one."""

from __future__ import annotations

import inspect

import weft
from weft import errors


def test_all_is_pinned() -> None:
    # Changing the public names is an API change: update this list on purpose, not by accident.
    assert sorted(weft.__all__) == sorted(
        [
            "DEFAULT_TARGET",
            "Applied",
            "AsyncClient",
            "AsyncRun",
            "Attempt",
            "Blob",
            "Cache",
            "Client",
            "Explanation",
            "Function",
            "FunctionOutputs",
            "LogChunk",
            "OutputRef",
            "ParamRef",
            "Pipeline",
            "PipelineVersion",
            "Redundancy",
            "Retry",
            "RetrySettings",
            "Run",
            "RunEvent",
            "RunRecord",
            "SecretRef",
            "StepHandle",
            "StepRun",
            "SubPipeline",
            "__version__",
            "errors",
            "function",
            "literal",
            "load_pipeline",
            "loads_pipeline",
            "secret",
        ]
    )
    for name in weft.__all__:
        assert hasattr(weft, name), name


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def _parameters(signature: inspect.Signature) -> list[tuple[str, inspect._ParameterKind, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_client_has_every_async_client_method_with_the_same_parameters() -> None:
    # The sync Client is a face over AsyncClient: a method added to one and not the other,
    # or with different parameters, is exactly the drift this design exists to prevent.
    sync_methods = _public_methods(weft.Client)
    async_methods = _public_methods(weft.AsyncClient)
    assert set(async_methods) - {"close"} <= set(sync_methods)
    for name, signature in async_methods.items():
        assert _parameters(sync_methods[name]) == _parameters(signature), name
    assert inspect.ismethod(weft.Client.connect)
    assert _parameters(inspect.signature(weft.Client.connect)) == _parameters(
        inspect.signature(weft.AsyncClient.connect)
    )


def test_run_has_every_async_run_method_with_the_same_parameters() -> None:
    sync_methods = _public_methods(weft.Run)
    async_methods = _public_methods(weft.AsyncRun)
    assert set(async_methods) == set(sync_methods)
    for name, signature in async_methods.items():
        assert _parameters(sync_methods[name]) == _parameters(signature), name


def test_async_client_calls_are_coroutines_or_async_iterators() -> None:
    for name, member in vars(weft.AsyncClient).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name


def test_every_error_class_is_exported_and_under_weft_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    assert len(classes) >= 17
    for cls in classes:
        assert issubclass(cls, errors.WeftError)
        # The tree in the module docstring names every class.
        assert cls.__name__ in (errors.__doc__ or ""), cls.__name__
