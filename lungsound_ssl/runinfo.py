"""Describe the software environment of a run, for the run directory.

``write_run_info`` saves one JSON file beside a run's outputs with everything
needed to trace and rerun it. It contains this package's version, the git
commit of the checkout the code ran from and the versions of Python and of the
main libraries. It also contains the CUDA devices found, the resolved
configuration and the seed.

Only the main process should call ``write_run_info``; the caller checks that
(for example with ``Accelerator.is_main_process``).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lungsound_ssl

logger = logging.getLogger(__name__)

# Libraries whose versions change results or behaviour of a run.
RECORDED_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "numpy",
    "scikit-learn",
    "soundfile",
    "soxr",
)

# Set by images built without the .git folder (the Dockerfile takes it as the
# GIT_COMMIT build argument), so that their runs still name a commit.
GIT_COMMIT_ENV = "LUNGSOUND_GIT_COMMIT"

_GIT_TIMEOUT_SECONDS = 5.0
_PACKAGE_DIR = Path(lungsound_ssl.__file__).resolve().parent


def _run_git(args: list[str], cwd: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.debug("git %s failed in %s: %s", " ".join(args), cwd, error)
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def git_state(package_dir: Path = _PACKAGE_DIR) -> dict[str, Any]:
    """Find the git commit of the checkout that ``package_dir`` belongs to.

    The commit is reported only when ``package_dir`` is the package folder at
    the top of a git work tree (a clone, or an editable install of one). A
    copy installed into site-packages that happens to lie inside some other
    repository is not mistaken for a checkout. Without a checkout, the commit
    comes from the ``LUNGSOUND_GIT_COMMIT`` environment variable when set.

    Returns:
        A mapping with ``commit`` (hex string or None), ``dirty`` (True when
        tracked files differ from the commit, None when unknown) and
        ``source`` ("git", "environment" or None).
    """
    package_dir = Path(package_dir).resolve()
    toplevel = _run_git(["rev-parse", "--show-toplevel"], package_dir)
    if toplevel and Path(toplevel).resolve() / package_dir.name == package_dir:
        commit = _run_git(["rev-parse", "HEAD"], package_dir)
        if commit:
            # Untracked files (run outputs, caches) do not change the code,
            # so only tracked files decide whether the tree is dirty.
            status = _run_git(["status", "--porcelain", "--untracked-files=no"], package_dir)
            dirty = None if status is None else bool(status)
            return {"commit": commit, "dirty": dirty, "source": "git"}

    commit = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if commit:
        return {"commit": commit, "dirty": None, "source": "environment"}
    return {"commit": None, "dirty": None, "source": None}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Read installed distribution versions; None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def accelerator_info() -> dict[str, Any]:
    """Describe the CUDA devices visible to torch."""
    import torch  # deferred: importing torch takes seconds

    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return {
        "cuda_available": available,
        "cuda_version": torch.version.cuda,
        "device_count": count,
        "device_names": [torch.cuda.get_device_name(index) for index in range(count)],
    }


def collect_run_info(config: dict | None = None, seed: int | None = None) -> dict[str, Any]:
    """Collect versions, commit, hardware, configuration and seed of a run.

    Args:
        config: The resolved configuration, as a JSON-serializable mapping
            (dataclasses, paths, enums, tuples and sets are converted when
            the result is written).
        seed: The random seed of the run.

    Returns:
        A mapping ready for ``json.dump`` with ``write_run_info``'s converter.
    """
    return {
        "package": "lungsound-ssl",
        "package_version": lungsound_ssl.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "accelerator": accelerator_info(),
        "command": list(sys.argv),
        "config": config,
        "seed": seed,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _to_json(value: Any) -> Any:
    """Convert the non-JSON types that configurations usually contain."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def write_run_info(
    output_dir: str | Path,
    config: dict | None = None,
    seed: int | None = None,
    filename: str = "run_info.json",
) -> Path:
    """Write ``collect_run_info(config, seed)`` as JSON into ``output_dir``.

    The directory is created when missing, and an existing file of the same
    name is replaced.

    Returns:
        The path of the written file.

    Raises:
        ValueError: if ``config`` contains a value that cannot be written as
            JSON; convert it (for example to a string) before the call.
    """
    info = collect_run_info(config=config, seed=seed)
    try:
        text = json.dumps(info, indent=2, default=_to_json)
    except TypeError as error:
        raise ValueError(
            f"run info for {output_dir} cannot be written as JSON: {error}; "
            "convert that config value to a string, number, list or mapping"
        ) from error

    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    logger.info("wrote run info to %s", path)
    return path
