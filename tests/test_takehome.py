"""Reading the take-home layout: label encodings, file-name spellings, metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lungsound_ssl.data import records as R
from lungsound_ssl.data.takehome import normalise_file_key, read_takehome
from lungsound_ssl.labels import UnknownLabelError, parse_label_string


def _write_clip(path, seconds=0.5, rate=8000, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(path, 0.1 * rng.standard_normal(int(seconds * rate)), rate, subtype="PCM_16")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("normal", (1, 0, 0)),
        ("Wheeze", (0, 1, 0)),
        (" crackles ", (0, 0, 1)),
        ("both", (0, 1, 1)),
        ("wheeze+crackle", (0, 1, 1)),
        ("Crackle & Wheeze", (0, 1, 1)),
        ("wheeze and crackle", (0, 1, 1)),
        ("normal+wheeze", (1, 1, 0)),
    ],
)
def test_parse_label_string_spellings(value, expected):
    assert parse_label_string(value) == expected


def test_parse_label_string_unknown():
    with pytest.raises(UnknownLabelError, match="rales"):
        parse_label_string("rales")


@pytest.mark.parametrize(
    "name", ["clip_0001", "clip_0001.wav", "train/clip_0001.wav", "./train/clip_0001", "train\\clip_0001"]
)
def test_file_key_spellings(name):
    assert normalise_file_key(name) == "clip_0001.wav"


@pytest.mark.parametrize("file_column", ["filename", "file", "file_name", "path", "fname"])
def test_onehot_and_file_column_names(tmp_path, file_column):
    (tmp_path / "train").mkdir()
    for i in range(3):
        _write_clip(tmp_path / "train" / f"c{i}.wav", seed=i)
    pd.DataFrame(
        {file_column: ["c0", "train/c1.wav", "c2.wav"], "normal": [1, 0, 0], "wheeze": [0, 1, 1], "crackle": [0, 0, 1]}
    ).to_csv(tmp_path / "train.csv", index=False)

    records = {r.clip_id: r for r in read_takehome(tmp_path)}

    assert sorted(records) == ["c0.wav", "c1.wav", "c2.wav"]
    assert records["c0.wav"].labels == (1, 0, 0)
    assert records["c1.wav"].labels == (0, 1, 0)
    assert records["c2.wav"].labels == (0, 1, 1)
    assert all(r.exclusion is None for r in records.values())


def test_single_label_column_and_metadata(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(4):
        _write_clip(tmp_path / "train" / f"c{i}.wav", seed=i)
    pd.DataFrame(
        {"fname": ["c0", "c1", "c2", "c3"], "Label": ["Normal", "crackle & wheeze", "normal+wheeze", "rales"],
         "device": ["A", "B", "A", "B"]}
    ).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"filename": ["c0.wav", "c1.wav"], "patient_id": ["p1", "p2"]}).to_csv(
        tmp_path / "metadata.csv", index=False
    )

    records = {r.clip_id: r for r in read_takehome(tmp_path)}

    assert records["c0.wav"].labels == (1, 0, 0)
    assert records["c1.wav"].labels == (0, 1, 1)
    assert records["c2.wav"].exclusion == R.LABEL_CONFLICT
    assert records["c3.wav"].exclusion == R.UNKNOWN_LABEL
    assert records["c0.wav"].attributes["patient_id"] == "p1"
    assert records["c1.wav"].attributes["device"] == "B"
    assert "patient_id" not in records["c2.wav"].attributes


def test_unlisted_clip_kept_unlabeled(tmp_path):
    (tmp_path / "train").mkdir()
    _write_clip(tmp_path / "train" / "listed.wav")
    _write_clip(tmp_path / "train" / "extra.wav", seed=1)
    pd.DataFrame({"filename": ["listed"], "label": ["normal"]}).to_csv(tmp_path / "train.csv", index=False)

    records = {r.clip_id: r for r in read_takehome(tmp_path)}

    assert records["extra.wav"].labels is None
    assert records["extra.wav"].exclusion == R.MISSING_LABEL


def test_missing_folder_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_takehome(tmp_path / "nowhere")


def test_missing_train_csv_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="train.csv"):
        read_takehome(tmp_path)


def test_csv_without_label_column_error(tmp_path):
    (tmp_path / "train").mkdir()
    pd.DataFrame({"filename": ["a"], "score": [1]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match="label"):
        read_takehome(tmp_path)


def test_csv_without_file_column_error(tmp_path):
    (tmp_path / "train").mkdir()
    pd.DataFrame({"clip": ["a"], "label": ["normal"]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match="file name column"):
        read_takehome(tmp_path)
