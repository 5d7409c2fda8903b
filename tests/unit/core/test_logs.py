"""weft_core.logs and the operation flags: JSON lines with run context, one level setting."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from weft_core.config import ApiConfig
from weft_core.logs import ContextFilter, JsonFormatter, TextFormatter, context_for, log_context, setup_logging
from weft_executor.config import ExecutorConfig

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter("weft-test"))
    logger = logging.getLogger("weft.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_context_set_around_them(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, _ = captured
    logger.info("before")
    with log_context(run="namespaces/ns/runs/r1", step="train", trace_id="ab" * 16):
        logger.info("in the step")
        with log_context(attempt=2):
            logger.warning("in the attempt")
        logger.info("after the attempt")
    logger.info("after")
    first, step, attempt, after_attempt, after = lines(stream)
    assert first == {"time": first["time"], "level": "INFO", "service": "weft-test", "logger": "weft.test.logs",
                     "message": "before"}  # fmt: skip
    assert (step["run"], step["step"], step["trace_id"]) == ("namespaces/ns/runs/r1", "train", "ab" * 16)
    assert "attempt" not in step
    assert attempt["attempt"] == 2
    assert attempt["level"] == "WARNING"
    assert "attempt" not in after_attempt
    assert after_attempt["step"] == "train"
    assert "run" not in after
    assert "trace_id" not in after


async def test_a_task_started_in_a_step_context_logs_with_it(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, _ = captured

    async def work() -> None:
        logger.info("working")

    context = context_for(run="namespaces/ns/runs/r2", step="load", traceparent=TRACEPARENT)
    await asyncio.create_task(work(), context=context)
    logger.info("outside")
    inside, outside = lines(stream)
    assert inside["run"] == "namespaces/ns/runs/r2"
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "run" not in outside


def test_exceptions_are_one_json_line(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, _ = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(stream)
    assert "ValueError: boom" in str(line["exception"])


def test_text_lines_show_the_context_in_brackets() -> None:
    record = logging.LogRecord("weft.x", logging.INFO, __file__, 1, "launched", None, None)
    with log_context(run="namespaces/ns/runs/r3", step="s"):
        ContextFilter().filter(record)
    assert TextFormatter().format(record).endswith("weft.x: launched [run=namespaces/ns/runs/r3 step=s]")


def test_setup_logging_honours_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("WARNING", "json", "weft-executor")
        logging.getLogger("weft_executor.test").info("hidden")
        logging.getLogger("weft_executor.test").warning("shown")
        err = capsys.readouterr().err
        assert "hidden" not in err
        assert json.loads(err)["message"] == "shown"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[1]:
            root.addHandler(handler)
        root.setLevel(saved[0])


def test_both_services_read_the_operation_flags() -> None:
    environ = {"WEFT_ETCD_ENDPOINTS": "http://127.0.0.1:2379", "WEFT_BLOB_DIR": "/b", "WEFT_API": "127.0.0.1:1"}
    api = ApiConfig.from_args([], environ)
    assert (api.metrics_port, api.log_level, api.log_format) == (None, "INFO", "text")
    executor = ExecutorConfig.from_args(
        ["--metrics-port", "9090", "--log-format", "json"], {**environ, "WEFT_LOG_LEVEL": "debug"}
    )
    assert (executor.metrics_port, executor.log_level, executor.log_format) == (9090, "DEBUG", "json")
    assert ApiConfig.from_args(["--metrics-port", "0"], environ).metrics_port == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--log-level", "LOUD"], "--log-level (or WEFT_LOG_LEVEL) has the invalid value 'LOUD'"),
        (["--log-format", "xml"], "expected one of text, json"),
        (["--metrics-port", "70000"], "expected a port 0-65535"),
    ],
)
def test_bad_operation_flags_are_refused(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ApiConfig.from_args(argv, {"WEFT_ETCD_ENDPOINTS": "http://127.0.0.1:2379", "WEFT_BLOB_DIR": "/b"})
    assert expected in capsys.readouterr().err
