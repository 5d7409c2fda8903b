"""The CLI's argument handling and drawing, without a server: parsing, -p pairs, the DAG layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from weft import load_pipeline
from weft.cli import build_parser, main
from weft.cli._commands import parse_parameters
from weft.cli._output import dag_layers, duration_text
from weft.errors import InvalidArgument

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "etl"


def test_global_options_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-s", "h:1", "-n", "ns", "-o", "json", "runs", "list"])
    after = parser.parse_args(["runs", "list", "-s", "h:1", "-n", "ns", "-o", "json"])
    for args in (before, after):
        assert (args.server, args.namespace, args.output) == ("h:1", "ns", "json")


def test_server_defaults_to_weft_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_SERVER", "example:9")
    assert build_parser().parse_args(["runs", "list"]).server == "example:9"
    monkeypatch.delenv("WEFT_SERVER")
    assert build_parser().parse_args(["runs", "list"]).server == "127.0.0.1:50051"


def test_run_options() -> None:
    args = build_parser().parse_args(["run", "etl", "-p", "rows=5", "-p", "seed=1", "--watch", "--cache", "off"])
    assert (args.pipeline, args.param, args.watch, args.cache) == ("etl", ["rows=5", "seed=1"], True, "off")


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run"])
    assert exited.value.code == 2
    assert "the following arguments are required: pipeline" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["run", "etl", "--cache", "sometimes"])
    assert exited.value.code == 2


def test_parameters(tmp_path: Path) -> None:
    value_file = tmp_path / "v.txt"
    value_file.write_text("from a file\n")
    assert parse_parameters(["a=1", "b=x=y", "c=", f"d=@{value_file}"]) == {
        "a": "1",
        "b": "x=y",
        "c": "",
        "d": "from a file\n",
    }
    with pytest.raises(InvalidArgument, match="write parameters as KEY=VALUE"):
        parse_parameters(["novalue"])
    with pytest.raises(InvalidArgument, match="write parameters as KEY=VALUE"):
        parse_parameters(["=1"])
    with pytest.raises(InvalidArgument, match="cannot read"):
        parse_parameters([f"a=@{tmp_path / 'missing'}"])


def test_file_errors_exit_1_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspec:\n  steps:\n  - name: a\n    contianer: {}\n")
    assert main(["-s", "127.0.0.1:1", "apply", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: spec.steps[0].contianer: unknown field 'contianer'; did you mean 'container'?" in err
    assert "Traceback" not in err


def test_dag_layers_of_the_example() -> None:
    layers = dag_layers(load_pipeline(EXAMPLES / "pipeline.yaml").spec())
    assert [[s.name for s in layer] for layer in layers] == [
        ["generate"],
        ["transform-0", "transform-1", "transform-2"],
        ["aggregate"],
        ["report"],
    ]


def test_durations() -> None:
    assert duration_text(None) == "-"
    assert duration_text(0.42) == "0.4s"
    assert duration_text(184) == "3m04s"
    assert duration_text(3725) == "1h02m"


def test_the_steps_table_detail_shows_the_last_log_line_not_a_dangling_label() -> None:
    from weft._results import StepRun
    from weft.cli._output import step_detail
    from weft.v1 import run_pb2

    def detail(message: str) -> str:
        return step_detail(StepRun(run_pb2.StepRun(step="s", state=run_pb2.StepRun.STATE_FAILED, message=message)))

    assert detail("exit code 4; last log lines:\nreading\nbad row 17\n") == "exit code 4: bad row 17"
    assert detail("exit code 1; last stderr lines:\nbad password") == "exit code 1: bad password"
    assert detail("timed out after 2s") == "timed out after 2s"


def test_lineage_marks_an_outcome_found_without_its_index() -> None:
    from rich.console import Console

    from weft.cli._output import lineage_view
    from weft.v1 import run_pb2

    lineage = run_pb2.Lineage(
        nodes=[
            run_pb2.LineageNode(dna="sha256:" + "1" * 64, run="namespaces/default/runs/r1", step="report"),
            run_pb2.LineageNode(
                dna="sha256:" + "2" * 64, run="namespaces/default/runs/r1", step="middle", distance=-1, unindexed=True
            ),
        ],
        edges=[run_pb2.LineageEdge(producer="sha256:" + "2" * 64, consumer="sha256:" + "1" * 64, input="in")],
    )
    console = Console(width=200, record=True)
    console.print(lineage_view(lineage))
    drawn = console.export_text()
    assert "middle  run r1" in drawn
    assert drawn.count("(not indexed yet)") == 1
    assert "(not indexed yet)" in next(line for line in drawn.splitlines() if "middle" in line)
