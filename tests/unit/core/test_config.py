"""weft_core.config: flags over WEFT_* variables over defaults, and masked secrets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from weft_core.config import ApiConfig, Flag, describe_config, mask_url_passwords, parse_flags, secret_field


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    environ = {"WEFT_ETCD_ENDPOINTS": "http://10.0.0.1:2379", "WEFT_BLOB_DIR": "/env/blobs", "WEFT_LISTEN": "0.0.0.0:1"}
    config = ApiConfig.from_args(["--listen", "127.0.0.1:0"], environ)
    assert config == ApiConfig(
        etcd_endpoints="http://10.0.0.1:2379", listen="127.0.0.1:0", blob_dir=Path("/env/blobs"), etcd_root="/weft"
    )


def test_a_missing_required_setting_names_the_flag_and_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ApiConfig.from_args(["--blob-dir", "/b"], {})
    assert exited.value.code == 2
    assert (
        "--etcd-endpoints is required: pass --etcd-endpoints VALUE or set WEFT_ETCD_ENDPOINTS"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--listen", "nope"], "--listen (or WEFT_LISTEN) has the invalid value 'nope'"),
        (["--etcd-root", "weft/"], "--etcd-root (or WEFT_ETCD_ROOT) has the invalid value"),
        (["--etcd-endpoints", "not a url"], "is not an etcd endpoint"),
    ],
)
def test_malformed_values_are_refused(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"WEFT_ETCD_ENDPOINTS": "http://127.0.0.1:2379", "WEFT_BLOB_DIR": "/b"}
    with pytest.raises(SystemExit):
        ApiConfig.from_args(argv, base)
    assert expected in capsys.readouterr().err


def test_secrets_are_masked_when_the_config_is_described() -> None:
    @dataclass(frozen=True)
    class ExampleConfig:
        etcd_endpoints: str
        token: str = secret_field()
        unset_token: str = secret_field()

    text = describe_config(ExampleConfig("https://root:hunter2@etcd:2379,http://etcd2:2379", token="s3cret"))
    assert "hunter2" not in text
    assert "s3cret" not in text
    assert text == "etcd_endpoints=https://root:*****@etcd:2379,http://etcd2:2379 token=***** unset_token=<unset>"
    assert mask_url_passwords("no url here") == "no url here"


def test_a_service_can_declare_its_own_flags() -> None:
    flags = [Flag("--max-parallel", "WEFT_MAX_PARALLEL", "attempts at once", default="4", convert=int)]
    assert parse_flags("x", "x", flags, [], {"WEFT_MAX_PARALLEL": "9"}) == {"max_parallel": 9}
    assert parse_flags("x", "x", flags, ["--max-parallel", "2"], {}) == {"max_parallel": 2}
