"""Tests for layout detection and dispatch on generated folders of each kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lungsound_ssl.data.formats import DATA_FORMATS, detect_format, read_records
from lungsound_ssl.data.sprsound import SPRSoundOptions


def write_wav(path: Path, seconds: float = 1.0, sample_rate_hz: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * sample_rate_hz), dtype=np.int16), sample_rate_hz)


def make_takehome(folder: Path, csv_name: str = "train.csv", header: str = "filename") -> Path:
    write_wav(folder / "train" / "clip_0001.wav")
    (folder / csv_name).write_text(f"{header},normal,wheeze,crackle\nclip_0001.wav,1,0,0\n")
    return folder


def make_icbhi(folder: Path, with_audio: bool = True) -> Path:
    stem = "150_1b2_Al_sc_AKGC417L"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.txt").write_text("0.1\t0.9\t0\t1\n")
    if with_audio:
        write_wav(folder / f"{stem}.wav")
    return folder


def make_sprsound(folder: Path, key: str = "record_annotation") -> Path:
    stem = "41064945_5.0_1_p2_2533"
    content = {key: "CAS", "event_annotation": [{"start": "100", "end": "600", "type": "Rhonchi"}]}
    (folder / "json").mkdir(parents=True, exist_ok=True)
    (folder / "json" / f"{stem}.json").write_text(json.dumps(content))
    write_wav(folder / "wav" / f"{stem}.wav")
    return folder


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (make_takehome, "takehome"),
        (lambda folder: make_takehome(folder, "labels.csv", "file"), "takehome"),
        (make_icbhi, "icbhi"),
        (lambda folder: make_icbhi(folder, with_audio=False), "icbhi"),
        (make_sprsound, "sprsound"),
        (lambda folder: make_sprsound(folder, "recording_annotation"), "sprsound"),
    ],
)
def test_detect_each_layout(tmp_path, make, expected):
    assert detect_format(make(tmp_path / "data")) == expected


@pytest.mark.real_data
def test_detect_real_folders(icbhi_cycles_dir, icbhi_annotations_dir, sprsound_dir):
    assert detect_format(icbhi_cycles_dir) == "takehome"
    assert detect_format(icbhi_annotations_dir) == "icbhi"
    assert detect_format(sprsound_dir) == "sprsound"


def test_detect_csv_without_file_column(tmp_path):
    make_takehome(tmp_path, "labels.csv", header="id")
    with pytest.raises(ValueError, match="no supported data layout"):
        detect_format(tmp_path)


def test_detect_unknown_lists_what_was_looked_for(tmp_path):
    write_wav(tmp_path / "recording.wav")
    (tmp_path / "notes.txt").write_text("0.1 0.9 0 1\n")
    (tmp_path / "meta.json").write_text('{"version": 1}')
    with pytest.raises(ValueError) as raised:
        detect_format(tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message
    assert "train.csv" in message
    assert "<patient>_<index>_<location>_<mode>_<device>.txt" in message
    assert "'record_annotation'" in message
    assert "--data_format" in message


def test_detect_two_layouts_raises(tmp_path):
    make_icbhi(tmp_path / "icbhi")
    make_sprsound(tmp_path / "sprsound")
    with pytest.raises(ValueError, match=r"more than one data layout \(icbhi, sprsound\)"):
        detect_format(tmp_path)


def test_detect_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        detect_format(tmp_path / "absent")


def test_read_records_auto_sprsound(tmp_path):
    data_format, records = read_records(make_sprsound(tmp_path))
    assert data_format == "sprsound"
    assert [record.labels for record in records] == [(0, 1, 0)]


def test_read_records_passes_sprsound_options(tmp_path):
    options = SPRSoundOptions(rhonchi_as_wheeze=False)
    _, [record] = read_records(make_sprsound(tmp_path), "sprsound", options)
    assert record.labels is None


def test_read_records_forced_format(tmp_path):
    # Both layouts present: forcing one reads only that one.
    make_icbhi(tmp_path / "icbhi")
    make_sprsound(tmp_path / "sprsound")
    data_format, records = read_records(tmp_path, data_format="icbhi")
    assert data_format == "icbhi"
    assert [record.clip_id for record in records] == ["150_1b2_Al_sc_AKGC417L.wav#1"]


def test_read_records_auto_takehome(tmp_path):
    pytest.importorskip("lungsound_ssl.data.takehome")
    data_format, records = read_records(make_takehome(tmp_path))
    assert data_format == "takehome"
    assert len(records) == 1


def test_read_records_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown data format 'wav'"):
        read_records(tmp_path, data_format="wav")


def test_data_formats_names():
    assert DATA_FORMATS == ("takehome", "icbhi", "sprsound")
