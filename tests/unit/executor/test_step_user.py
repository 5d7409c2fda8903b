"""Who local steps run as (`--step-user`), and the default of `--max-parallel`."""

from __future__ import annotations

import os
import pwd

import pytest

from weft_executor.config import ExecutorConfig, default_max_parallel
from weft_executor.runtime.local import StepUser, resolve_step_user

NOBODY = pwd.getpwnam("nobody")


def test_a_root_executor_runs_steps_as_nobody_by_default() -> None:
    assert resolve_step_user("", euid=0) == StepUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid)


def test_an_unprivileged_executor_runs_steps_as_itself_by_default() -> None:
    assert resolve_step_user("", euid=1000) is None


def test_a_step_user_by_name_uid_or_uid_and_gid() -> None:
    assert resolve_step_user("nobody", euid=0) == StepUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert resolve_step_user(str(NOBODY.pw_uid), euid=0) == StepUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert resolve_step_user("4242:4343", euid=0) == StepUser("4242", 4242, 4343)


@pytest.mark.skipif(os.geteuid() != 0, reason="root keeps root only when it runs as root")
def test_root_keeps_root_when_asked() -> None:
    assert resolve_step_user("root") is None


@pytest.mark.parametrize(
    ("value", "euid", "problem"),
    [
        ("no-such-user-weft", 0, "no such user"),
        ("nobody:nogroup", 0, "the group must be a numeric gid"),
        ("nobody", 1000, "only an executor running as root can run steps as another user"),
    ],
)
def test_a_step_user_that_cannot_be_used_is_refused_with_the_fix(value: str, euid: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        resolve_step_user(value, euid=euid)
    assert "--step-user" in str(error.value)


def test_max_parallel_defaults_to_four_per_cpu_and_at_least_eight() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert default_max_parallel() == max(8, 4 * cpus)
    config = ExecutorConfig.from_args(["--api", "127.0.0.1:1", "--etcd-endpoints", "http://127.0.0.1:2"], {})
    assert config.max_parallel == max(8, 4 * cpus)
    assert config.step_user == ""


def test_max_parallel_help_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ExecutorConfig.from_args(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert "4 per CPU, at least 8" in text
    assert "most steps wait" in text
    assert "--step-user" in text
