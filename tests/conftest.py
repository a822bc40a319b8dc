"""Shared fixtures: paths to the real lung-sound data and small generated sets.

Real-data tests use ``../shared/data`` beside the repository. On a user's fresh
clone without it they skip with a reason. With ``CI=true`` a missing folder is
a failure, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGSOUND_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real data not found at {path}; CI must run the real-data tests")
    pytest.skip(f"real data not found at {path} (set LUNGSOUND_SHARED_DATA to run this test)")


@pytest.fixture(scope="session")
def icbhi_cycles_dir() -> Path:
    """The take-home layout built from real ICBHI 2017 cycles."""
    return _require(SHARED_DATA / "icbhi-cycles")


@pytest.fixture(scope="session")
def icbhi_annotations_dir() -> Path:
    """Original ICBHI 2017 per-recording annotation files (no audio)."""
    return _require(SHARED_DATA / "icbhi-annotations")


@pytest.fixture(scope="session")
def sprsound_dir() -> Path:
    """SPRSound 2022 recordings with JSON event annotations."""
    return _require(SHARED_DATA / "sprsound-subset")


@pytest.fixture(scope="session")
def clip_cache_dir(tmp_path_factory) -> Path:
    """One decoded-audio cache for the whole session, so real data is decoded once."""
    return tmp_path_factory.mktemp("clip_cache")


@pytest.fixture(scope="session")
def icbhi_table(icbhi_cycles_dir, clip_cache_dir):
    """The real ICBHI cycles loaded and cleaned: ``(ClipTable, report)``."""
    from lungsound_ssl.data import DataConfig, load_clips

    return load_clips(DataConfig(data_dir=str(icbhi_cycles_dir), cache_dir=str(clip_cache_dir)))
