"""deploy/: Docker is not available here, so the Dockerfiles are checked as text: the build
args they document are declared, used and documented in the operator guide, every
`${VAR}` is in scope, the CUDA image builds both engines with CUDA, both images stop
gracefully. The systemd unit template is what supervisor/cli/service_unit.py renders, and the env
example only holds options `supervisor start` accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from supervisor.cli.service_unit import SYSTEM_CONFIG_PATH, ServiceSpec, render_unit
from supervisor.exit_codes import restart_prevent_exit_statuses

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GUIDE = (ROOT / "docs" / "operator-guide.md").read_text()
DOCKERFILES = ["Dockerfile.cuda", "Dockerfile.cpu"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> tuple[set[str], list[list[tuple[str, str]]]]:
    """Global ARGs (before the first FROM) and the instructions of each stage."""
    global_args: set[str] = set()
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            result.append([(word, rest)])
        elif result:
            result[-1].append((word, rest))
        elif word == "ARG":
            global_args.add(rest.split("=", 1)[0])
    return global_args, result


def documented_args(text: str) -> set[str]:
    header = text.split("\nARG ", 1)[0]
    block = header.split("# Build args", 1)[1]
    return set(re.findall(r"^#   ([A-Z_]+) ", block, flags=re.M))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_build_arg_is_declared_documented_and_in_scope(name):
    text = (DEPLOY / name).read_text()
    global_args, stage_list = stages(text)
    declared = set(global_args)
    for stage in stage_list:
        in_scope = {"PATH", "LD_LIBRARY_PATH"}
        from_line = stage[0][1]
        for var in re.findall(r"\$\{(\w+)\}", from_line):
            assert var in global_args, f"{name}: FROM uses {var}, not declared before FROM"
        for word, rest in stage[1:]:
            if word == "ARG":
                in_scope.add(rest.split("=", 1)[0])
                declared.add(rest.split("=", 1)[0])
            elif word == "ENV":
                in_scope.update(re.findall(r"(\w+)=", rest))
            for var in re.findall(r"\$\{(\w+)\}", rest):
                assert var in in_scope, f"{name}: {word} uses ${{{var}}} out of scope"
    assert documented_args(text) == declared
    guide_rows = {
        m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \| (cuda|cpu|both) \|", GUIDE, re.M)
    }
    assert declared <= guide_rows, declared - guide_rows


def test_cuda_image_builds_both_engines_for_cuda():
    text = (DEPLOY / "Dockerfile.cuda").read_text()
    _, (build, final) = stages(text)
    assert build[0][1] == "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build"
    assert final[0][1] == "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert re.search(r'CMAKE_ARGS="-DGGML_CUDA=on [^"]*\$\{CUDA_ARCHITECTURES\}"', runs)
    assert re.search(r'CMAKE_ARGS="-DSD_CUDA=ON [^"]*\$\{CUDA_ARCHITECTURES\}"', runs)
    assert '"${LLAMA_CPP_PYTHON}"' in runs and '"${SD_CPP_PYTHON}"' in runs
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in env
    assert "LD_LIBRARY_PATH" not in env  # the CUDA stub is for linking only


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_unprivileged_and_stop_gracefully(name):
    _, stage_list = stages((DEPLOY / name).read_text())
    final = dict(stage_list[-1][1:])  # last instruction of each kind wins
    assert final["USER"] == "studio-worker"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["ENTRYPOINT"].startswith('["/usr/bin/tini", "--", "supervisor", "--config"')
    assert "/var/lib/studio-worker" in final["VOLUME"]
    assert "/healthz" in final["HEALTHCHECK"]
    assert '"--metrics", "0.0.0.0:9464"' in final["CMD"]
    copied = {rest.split()[0] for word, rest in stage_list[0] if word == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"{name} does not copy {pattern}"
    assert (DEPLOY / f"{name}.dockerignore").is_file()


def test_guide_documents_the_gpu_runtime_flags():
    for flag in ("--gpus all", "--runtime=nvidia", "NVIDIA_VISIBLE_DEVICES", "--stop-timeout"):
        assert flag in GUIDE, flag
    assert "-v studio-worker:/var/lib/studio-worker" in GUIDE


def test_unit_template_is_what_install_service_renders():
    text = (DEPLOY / "studio-worker.service").read_text()
    spec = ServiceSpec("system", Path("/opt/studio-worker/venv/bin/supervisor"), SYSTEM_CONFIG_PATH)
    rendered = render_unit(spec)
    header, _, body = text.partition(rendered.splitlines()[0] + "\n")
    assert all(line.startswith("#") for line in header.splitlines())
    assert rendered.splitlines()[0] + "\n" + body == rendered


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "studio-worker.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_env_example_args_are_start_options():
    values = env_example()
    args = shlex.split(values["STUDIO_WORKER_ARGS"])
    assert args == ["--metrics", "127.0.0.1:9464", "--log-format", "json"]
    assert values["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    help_text = subprocess.run(
        [sys.executable, "-c", "from supervisor.cli.app import main; main()", "start", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    for option in (a for a in args if a.startswith("--")):
        assert option in help_text, option


def test_unit_restart_prevention_is_the_exit_code_table():
    """The exit statuses systemd must not restart after are the table's, not typed twice."""
    text = (DEPLOY / "studio-worker.service").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("RestartPreventExitStatus=")]
    listed = tuple(int(c) for c in line.partition("=")[2].split())
    assert listed == restart_prevent_exit_statuses()
