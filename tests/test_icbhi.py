"""Tests for the ICBHI 2017 reader on the real annotation files with generated audio."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lungsound_ssl.data.icbhi import (
    DIAGNOSIS_FILE_NAME,
    SPLIT_FILE_NAME,
    parse_icbhi_annotation,
    parse_icbhi_name,
    read_icbhi,
)
from lungsound_ssl.data.records import FILE_MISSING, MISSING_LABEL

SAMPLE_RATE_HZ = 4000

# Recordings copied without audio, to check that their cycles are reported missing.
NO_AUDIO = ("101_1b1_Al_sc_AKGC417L", "110_1p1_Al_sc_Meditron", "226_1b1_Pl_sc_LittC2SE")


def naive_cycles(path: Path) -> list[list[str]]:
    """Split an annotation file into fields per non-blank line, without the reader."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def icbhi_dir(icbhi_annotations_dir, tmp_path_factory) -> Path:
    """The real annotation files beside noise recordings long enough for their last cycle."""
    folder = tmp_path_factory.mktemp("icbhi") / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for annotation in sorted(icbhi_annotations_dir.glob("*.txt")):
        shutil.copy(annotation, folder / annotation.name)
        if annotation.stem in NO_AUDIO:
            continue
        last_end_s = max(float(fields[1]) for fields in naive_cycles(annotation))
        frames = int(np.ceil((last_end_s + 0.5) * SAMPLE_RATE_HZ))
        noise = rng.integers(-3000, 3000, size=frames, dtype=np.int16)
        soundfile.write(folder / f"{annotation.stem}.wav", noise, SAMPLE_RATE_HZ, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def icbhi_records(icbhi_dir):
    return read_icbhi(icbhi_dir)


@pytest.mark.real_data
def test_read_cycle_counts_per_file(icbhi_dir, icbhi_records):
    counts = Counter(record.attributes["recording_id"] for record in icbhi_records)
    expected = {path.stem: len(naive_cycles(path)) for path in icbhi_dir.glob("*.txt")}
    assert dict(counts) == expected


@pytest.mark.real_data
def test_read_label_counts_match_flags(icbhi_dir, icbhi_records):
    expected = Counter()
    for path in icbhi_dir.glob("*.txt"):
        for _, _, crackles, wheezes in naive_cycles(path):
            crackle, wheeze = int(crackles), int(wheezes)
            expected[(int(not crackle and not wheeze), wheeze, crackle)] += 1
    assert Counter(record.labels for record in icbhi_records) == expected


@pytest.mark.real_data
def test_read_first_cycle_fields(icbhi_dir, icbhi_records):
    first_line = naive_cycles(icbhi_dir / "104_1b1_Al_sc_Litt3200.txt")[0]
    record = next(r for r in icbhi_records if r.clip_id == "104_1b1_Al_sc_Litt3200.wav#1")
    assert record.path == icbhi_dir / "104_1b1_Al_sc_Litt3200.wav"
    assert record.start_s == float(first_line[0])
    assert record.end_s == float(first_line[1])
    assert record.exclusion is None
    assert record.attributes == {
        "patient_id": "104",
        "recording_index": "1b1",
        "chest_location": "Al",
        "acquisition_mode": "sc",
        "device": "Litt3200",
        "recording_id": "104_1b1_Al_sc_Litt3200",
        "cycle_index": "1",
    }


@pytest.mark.real_data
def test_read_cycles_fit_in_audio(icbhi_records):
    durations_s = {}
    for record in icbhi_records:
        if record.exclusion is None and record.path not in durations_s:
            durations_s[record.path] = soundfile.info(record.path).duration
    late = [
        r.clip_id for r in icbhi_records if r.exclusion is None and r.end_s > durations_s[r.path]
    ]
    assert late == []


@pytest.mark.real_data
def test_read_missing_audio_marked(icbhi_dir, icbhi_records):
    missing = [record for record in icbhi_records if record.exclusion == FILE_MISSING]
    expected = sum(len(naive_cycles(icbhi_dir / f"{stem}.txt")) for stem in NO_AUDIO)
    assert len(missing) == expected
    assert {record.attributes["recording_id"] for record in missing} == set(NO_AUDIO)
    assert all(record.labels is not None for record in missing)


@pytest.mark.real_data
def test_read_split_and_diagnosis_files(icbhi_dir, tmp_path):
    split_file = tmp_path / "split.txt"
    # 110_1b1_Pr_sc_Meditron is spelled with another device here, as in copies whose
    # names were corrected after the split file was written.
    split_file.write_text(
        "104_1b1_Al_sc_Litt3200\ttest\n104_1b1_Ar_sc_Litt3200\ttrain\n\n110_1b1_Pr_sc_Litt3200 test  \n"
    )
    diagnosis_file = tmp_path / "diagnosis.txt"
    diagnosis_file.write_text("104\tCOPD\n110 Lung Fibrosis\n")

    records = read_icbhi(icbhi_dir, split_file=split_file, diagnosis_file=diagnosis_file)
    by_id = {record.clip_id: record for record in records}
    assert by_id["104_1b1_Al_sc_Litt3200.wav#1"].attributes["official_split"] == "test"
    assert by_id["104_1b1_Ar_sc_Litt3200.wav#2"].attributes["official_split"] == "train"
    assert by_id["110_1b1_Pr_sc_Meditron.wav#1"].attributes["official_split"] == "test"
    assert "official_split" not in by_id["226_1b1_Pl_sc_LittC2SE.wav#1"].attributes
    assert by_id["104_1b1_Al_sc_Litt3200.wav#1"].attributes["diagnosis"] == "COPD"
    assert by_id["110_1b1_Pr_sc_Meditron.wav#1"].attributes["diagnosis"] == "Lung Fibrosis"
    assert "diagnosis" not in by_id["226_1b1_Pl_sc_LittC2SE.wav#1"].attributes


def write_recording(folder: Path, stem: str, annotation: str | None, seconds: float = 3.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if annotation is not None:
        (folder / f"{stem}.txt").write_text(annotation)
    frames = int(seconds * SAMPLE_RATE_HZ)
    soundfile.write(folder / f"{stem}.wav", np.zeros(frames, dtype=np.int16), SAMPLE_RATE_HZ)


def test_read_finds_challenge_files_in_parent(tmp_path):
    data_dir = tmp_path / "audio_and_txt"
    write_recording(data_dir, "150_1b2_Al_sc_AKGC417L", "0.1\t1.0\t0\t0\n")
    (tmp_path / SPLIT_FILE_NAME).write_text("150_1b2_Al_sc_AKGC417L\ttrain\n")
    (tmp_path / DIAGNOSIS_FILE_NAME).write_text("150\tURTI\n")
    [record] = read_icbhi(data_dir)
    assert record.attributes["official_split"] == "train"
    assert record.attributes["diagnosis"] == "URTI"


def test_read_matches_audio_in_other_folder(tmp_path):
    write_recording(tmp_path / "audio", "150_1b2_Al_sc_AKGC417L", None)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "150_1b2_Al_sc_AKGC417L.txt").write_text("0.1 1.0 1 1\n")
    [record] = read_icbhi(tmp_path)
    assert record.path == tmp_path / "audio" / "150_1b2_Al_sc_AKGC417L.wav"
    assert record.labels == (0, 1, 1)
    assert record.exclusion is None


def test_read_audio_without_annotation_unlabelled(tmp_path):
    write_recording(tmp_path, "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n")
    write_recording(tmp_path, "150_1b2_Ar_sc_AKGC417L", None)
    records = {record.clip_id: record for record in read_icbhi(tmp_path)}
    assert set(records) == {"150_1b2_Al_sc_AKGC417L.wav#1", "150_1b2_Ar_sc_AKGC417L.wav"}
    whole = records["150_1b2_Ar_sc_AKGC417L.wav"]
    assert whole.labels is None
    assert whole.exclusion == MISSING_LABEL
    assert whole.start_s is None


def test_read_rejects_duplicate_recordings(tmp_path):
    write_recording(tmp_path / "a", "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n")
    write_recording(tmp_path / "b", "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n")
    with pytest.raises(
        ValueError, match="two annotation files for recording 150_1b2_Al_sc_AKGC417L"
    ):
        read_icbhi(tmp_path)


def test_read_empty_folder_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("0.1 1.0 0 0\n")
    with pytest.raises(ValueError, match="no ICBHI annotation files"):
        read_icbhi(tmp_path)


def test_read_malformed_line_names_file(tmp_path):
    write_recording(tmp_path, "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n1.0 2.0 0 x\n")
    with pytest.raises(ValueError, match=r"150_1b2_Al_sc_AKGC417L\.txt:2: "):
        read_icbhi(tmp_path)


def test_parse_tolerates_whitespace_and_blank_lines(tmp_path):
    path = tmp_path / "cycles.txt"
    path.write_text("\n0.036\t0.579\t0\t1  \n\n   \n0.579 2.45\t1\t0\t\r\n\n")
    assert parse_icbhi_annotation(path) == [(0.036, 0.579, 0, 1), (0.579, 2.45, 1, 0)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0.1 0.5 0", "expected 4 fields"),
        ("0.1 0.5 0 1 1", "expected 4 fields"),
        ("0.1 abc 0 1", "must be numbers"),
        ("0.1 nan 0 1", "must be finite"),
        ("0.1 0.5 2 0", "must be 0 or 1"),
        ("0.1 0.5 0 1.0", "must be 0 or 1"),
        ("0.5 0.5 0 0", "is not after start"),
        ("0.6 0.5 0 0", "is not after start"),
        ("-0.1 0.5 0 0", "negative start"),
    ],
)
def test_parse_malformed_line_raises(tmp_path, line, message):
    path = tmp_path / "cycles.txt"
    path.write_text(f"0.0 0.1 0 0\n\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + message):
        parse_icbhi_annotation(path)


def test_split_file_bad_value_raises(tmp_path):
    write_recording(tmp_path / "data", "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n")
    split_file = tmp_path / "split.txt"
    split_file.write_text("150_1b2_Al_sc_AKGC417L train\n150_1b2_Ar_sc_AKGC417L validation\n")
    with pytest.raises(ValueError, match=re.escape(f"{split_file}:2: split must be")):
        read_icbhi(tmp_path / "data", split_file=split_file)


def test_missing_split_file_raises(tmp_path):
    write_recording(tmp_path, "150_1b2_Al_sc_AKGC417L", "0.1 1.0 0 1\n")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        read_icbhi(tmp_path, split_file=tmp_path / "absent.txt")


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("101_1b1_Al_sc_Meditron", ("101", "1b1", "Al", "sc", "Meditron")),
        ("226_1b1_Pl_sc_LittC2SE", ("226", "1b1", "Pl", "sc", "LittC2SE")),
        ("107_3p2_Tc_mc_AKGC417L", ("107", "3p2", "Tc", "mc", "AKGC417L")),
    ],
)
def test_parse_name_fields(stem, expected):
    attributes = parse_icbhi_name(stem)
    keys = ("patient_id", "recording_index", "chest_location", "acquisition_mode", "device")
    assert tuple(attributes[key] for key in keys) == expected


@pytest.mark.parametrize(
    "stem", ["ICBHI_Challenge_diagnosis", "101_1b1_Xx_sc_Meditron", "101_1b1_Al_sc", "clip_0001"]
)
def test_parse_name_rejects_other_names(stem):
    assert parse_icbhi_name(stem) is None
