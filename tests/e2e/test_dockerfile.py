"""The Dockerfile: cached dependency layers, pinned installs, no wheels left in a layer, OCI
labels, a non-root user; and the console scripts it ships answer --help.

No base image can be pulled where the suite runs (no registry, no daemon), so the image is
built only where `docker info` answers; otherwise these checks read the Dockerfile and run
what its steps run (the requirement list, the services' --help) from this checkout.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from weft.localstack import find_service

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
sys.path.insert(0, str(REPO / "scripts"))
from third_party_requirements import third_party_requirements  # noqa: E402


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dependency_wheels_are_built_before_the_source_is_copied() -> None:
    steps = instructions()
    dependency_wheels = next(i for i, s in enumerate(steps) if s.startswith("RUN pip wheel") and "--requirement" in s)
    first_source_copy = next(
        i for i, s in enumerate(steps) if s.startswith("COPY services ") or s == "COPY sdk/python sdk/python"
    )
    copies_before = [s for s in steps[:dependency_wheels] if s.startswith("COPY")]
    assert dependency_wheels < first_source_copy
    # Only what decides the dependencies reaches that layer: pyprojects, pins, the script.
    for copy in copies_before:
        sources = copy.split()[1:-1]
        assert all(
            s.endswith(("pyproject.toml", "requirements-dev.txt", "third_party_requirements.py")) for s in sources
        ), copy


def test_installs_are_pinned_and_no_wheel_stays_in_a_layer() -> None:
    steps = instructions()
    assert any(re.search(r"pip install --no-cache-dir pip==\d+\.\d+", s) for s in steps)
    assert not any("--upgrade pip" in s for s in steps)
    runtime = steps[max(i for i, s in enumerate(steps) if s.startswith("FROM")) :]
    assert not any(s.startswith("COPY --from") for s in runtime), "wheels copied into the runtime image"
    assert any("--mount=type=bind,from=build,source=/wheels" in s for s in runtime)
    assert "USER 10001:10001" in runtime
    labels = " ".join(s for s in runtime if s.startswith("LABEL"))
    for key in ("title", "description", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    # Every FROM takes the one base image argument, which a release build pins by digest.
    assert {s for s in steps if s.startswith("FROM")} == {
        "FROM ${PYTHON_IMAGE} AS deps",
        "FROM deps AS build",
        "FROM ${PYTHON_IMAGE}",
    }


def test_the_requirements_the_image_builds_are_the_ones_installed_here() -> None:
    requirements = third_party_requirements(REPO)

    assert "prometheus-client>=0.26.0" in requirements
    assert not any(r.split(">")[0].split("=")[0] in {"weft", "weft-core"} for r in requirements)
    pins = dict(line.split("==") for line in (REPO / "requirements-dev.txt").read_text().splitlines() if "==" in line)
    for text in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", text)
        assert name, text
        installed = importlib.metadata.version(name.group(0))  # raises if it is not installed
        if name.group(0) in pins:
            # What the image builds (constrained by the pins) is what the suite runs with.
            assert installed == pins[name.group(0)], (text, installed)


@pytest.mark.parametrize("command", ["weft", "weft-api", "weft-executor"])
def test_each_console_script_of_the_image_answers_help(command: str) -> None:
    path = find_service(command)
    assert path is not None, f"{command} is not installed"

    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_image_builds_where_a_builder_answers(tmp_path: Path) -> None:
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no docker daemon answers here (and no base image could be pulled): the build is not run")
    tag = "weft-dockerfile-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(REPO)], check=True, timeout=1800)
    result = subprocess.run(["docker", "run", "--rm", tag, "weft-executor", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
