"""Tests for lungsound_ssl.runinfo: versions, git state and the JSON file."""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

import lungsound_ssl
from lungsound_ssl.runinfo import (
    GIT_COMMIT_ENV,
    RECORDED_PACKAGES,
    collect_run_info,
    git_state,
    write_run_info,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


@pytest.fixture()
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with a committed ``lungsound_ssl`` folder at its top."""
    # Keep git from finding a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    repo = tmp_path / "repo"
    package = repo / "lungsound_ssl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "Add package")
    return repo


@needs_git
def test_git_state_clean_checkout(checkout: Path):
    state = git_state(checkout / "lungsound_ssl")
    assert state["commit"] == _git(checkout, "rev-parse", "HEAD")
    assert state["dirty"] is False
    assert state["source"] == "git"


@needs_git
def test_git_state_modified_file_dirty(checkout: Path):
    (checkout / "lungsound_ssl" / "__init__.py").write_text("VALUE = 2\n")
    assert git_state(checkout / "lungsound_ssl")["dirty"] is True


@needs_git
def test_git_state_untracked_file_clean(checkout: Path):
    (checkout / "runs").mkdir()
    (checkout / "runs" / "metrics.json").write_text("{}\n")
    assert git_state(checkout / "lungsound_ssl")["dirty"] is False


@needs_git
def test_git_state_nested_copy_ignored(checkout: Path):
    # An installed copy inside someone else's repository is not a checkout.
    copy = checkout / "venv" / "site-packages" / "lungsound_ssl"
    copy.mkdir(parents=True)
    state = git_state(copy)
    assert state["commit"] is None
    assert state["source"] is None


def test_git_state_environment_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123abcd")
    package = tmp_path / "lungsound_ssl"
    package.mkdir()
    state = git_state(package)
    assert state["commit"] == "0123abcd"
    assert state["source"] == "environment"
    assert state["dirty"] is None


def test_git_state_without_git_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    assert git_state(REPO_ROOT / "lungsound_ssl")["commit"] is None


@needs_git
def test_git_state_this_checkout(monkeypatch: pytest.MonkeyPatch):
    package_dir = Path(lungsound_ssl.__file__).resolve().parent
    if package_dir != REPO_ROOT / "lungsound_ssl" or not (REPO_ROOT / ".git").exists():
        pytest.skip("lungsound_ssl is not imported from a git checkout of this repository")
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    assert collect_run_info()["git"]["commit"] == _git(REPO_ROOT, "rev-parse", "HEAD")


def test_collect_package_versions():
    info = collect_run_info()
    assert info["package_version"] == lungsound_ssl.__version__
    for name in RECORDED_PACKAGES:
        assert info["packages"][name] == importlib.metadata.version(name), name


def test_collect_accelerator_matches_torch():
    accelerator = collect_run_info()["accelerator"]
    assert accelerator["cuda_available"] == torch.cuda.is_available()
    assert accelerator["device_count"] == len(accelerator["device_names"])


def test_collect_config_and_seed():
    config = {"model": {"encoder": "ast"}, "learning_rate": 3e-4}
    info = collect_run_info(config=config, seed=17)
    assert info["config"] == config
    assert info["seed"] == 17


def test_collect_timestamp_is_utc_now():
    created = datetime.fromisoformat(collect_run_info()["created_utc"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)


def test_write_run_info_round_trip(tmp_path: Path):
    config = {"clip_seconds": 8.0, "labels": ["normal", "wheeze", "crackle"]}
    path = write_run_info(tmp_path / "runs" / "fold0", config=config, seed=3)
    assert path == tmp_path / "runs" / "fold0" / "run_info.json"
    saved = json.loads(path.read_text())
    assert saved["config"] == config
    assert saved["seed"] == 3
    assert saved["package_version"] == lungsound_ssl.__version__
    assert saved["packages"]["torch"] == torch.__version__


class _Encoder(enum.Enum):
    AST = "ast"


@dataclasses.dataclass
class _Optimizer:
    learning_rate: float
    betas: tuple[float, float]


def test_write_run_info_converts_config_types(tmp_path: Path):
    config = {
        "data_dir": Path("/data/icbhi"),
        "encoder": _Encoder.AST,
        "optimizer": _Optimizer(learning_rate=1e-4, betas=(0.9, 0.98)),
        "folds": {2, 0, 1},
        "weights": torch.tensor([0.5, 2.0]),
    }
    saved = json.loads(write_run_info(tmp_path, config=config, filename="info.json").read_text())
    assert saved["config"]["data_dir"] == "/data/icbhi"
    assert saved["config"]["encoder"] == "ast"
    assert saved["config"]["optimizer"] == {"learning_rate": 1e-4, "betas": [0.9, 0.98]}
    assert saved["config"]["folds"] == [0, 1, 2]
    assert saved["config"]["weights"] == [0.5, 2.0]


def test_write_run_info_rejects_unserializable(tmp_path: Path):
    with pytest.raises(ValueError, match="object is not JSON-serializable"):
        write_run_info(tmp_path, config={"callback": object()})
    assert not (tmp_path / "run_info.json").exists()
