"""The Docker side without building an image: scripts/docker_base.sh, scripts/docker_smoke.sh and
scripts/podman_env.sh parse, answer --help and refuse bad arguments with a message; podman_env.sh's helpers
(ulimits, missing Debian packages for a non-root user) behave; the Dockerfile keeps the CUDA base as its default
and its COPY sources pass the .dockerignore allow-list. The image itself is built and used by
`make docker-smoke` (scripts/docker_smoke.sh), which takes many minutes and is not part of the test run."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "scripts"
DOCKER_SCRIPTS = [SCRIPTS / "docker_base.sh", SCRIPTS / "docker_smoke.sh"]
PODMAN_ENV = SCRIPTS / "podman_env.sh"


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("path", [*DOCKER_SCRIPTS, PODMAN_ENV], ids=lambda p: p.name)
def test_scripts_parse(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", DOCKER_SCRIPTS, ids=lambda p: p.name)
def test_help_is_the_header_comment(path: Path) -> None:
    assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    header = path.read_text().split("\nset -euo pipefail")[0].splitlines()[1:]
    assert result.stdout.splitlines() == [re.sub(r"^# ?", "", line) for line in header]
    assert "set -euo" not in result.stdout


@pytest.mark.parametrize("path", DOCKER_SCRIPTS, ids=lambda p: p.name)
def test_unknown_argument_is_refused(path: Path) -> None:
    result = subprocess.run([str(path), "--no-such-option"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "unknown argument --no-such-option" in result.stderr and "valid:" in result.stderr


def test_smoke_refuses_a_bad_step_count() -> None:
    result = subprocess.run([str(SCRIPTS / "docker_smoke.sh")], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "STEPS": "a few"})
    assert result.returncode == 2
    assert "STEPS=a few" in result.stderr


def test_ulimits_are_within_what_the_host_grants() -> None:
    result = _bash(f". {PODMAN_ENV}; podman_ulimits", env={"PODMAN_ULIMITS": ""})
    match = re.fullmatch(r"--ulimit nofile=(\d+):\1 --ulimit nproc=(\d+):\2\n", result.stdout)
    assert match, result.stdout + result.stderr
    hard_nofile = _bash("ulimit -Hn").stdout.strip()
    assert hard_nofile == "unlimited" or int(match[1]) <= int(hard_nofile)
    assert int(match[2]) <= 32768
    override = _bash(f". {PODMAN_ENV}; podman_ulimits", env={"PODMAN_ULIMITS": "--ulimit nofile=64:64"})
    assert override.stdout == "--ulimit nofile=64:64\n"


def test_missing_packages_name_the_install_command_for_a_user(tmp_path: Path) -> None:
    """Not root and a package missing: no apt-get, but the command that installs it, and exit code 2."""
    for name, body in {"id": 'if [ "$1" = -u ]; then echo 1000; else echo someone; fi',
                       "dpkg-query": "exit 1", "apt-get": "echo apt-get must not run >&2; exit 9"}.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    result = _bash(f". {PODMAN_ENV}; ensure_debian_packages demo podman runc; echo unreachable",
                   env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sudo apt-get install --no-install-recommends podman runc" in result.stderr
    assert "apt-get must not run" not in result.stderr and "unreachable" not in result.stdout


def test_present_packages_need_nothing() -> None:
    result = _bash(f". {PODMAN_ENV}; ensure_debian_packages demo bash && echo fine")
    if "no dpkg-query" in result.stderr:
        pytest.skip("not a Debian/Ubuntu system")
    assert result.stdout == "fine\n", result.stderr


def test_dockerfile_defaults_to_the_cuda_base() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert default and default[1].startswith("pytorch/pytorch:") and "-cuda" in default[1]
    assert text.count("FROM ${BASE_IMAGE}") == 2  # the builder and the final stage


def test_dockerfile_copy_sources_pass_the_dockerignore() -> None:
    """Every COPY from the build context names something the .dockerignore allow-list lets through."""
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    text = (ROOT / "docker" / "Dockerfile").read_text()
    sources = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        sources += line.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"docker/Dockerfile copies {src}, which is not in the repository"
        assert any(src == a or src.startswith(a + "/") for a in allowed), \
            f"docker/Dockerfile copies {src}, but .dockerignore leaves it out: add '!{src}' there"


def test_make_docker_smoke_runs_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^docker-smoke:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert rule and "scripts/docker_smoke.sh" in rule[1]
