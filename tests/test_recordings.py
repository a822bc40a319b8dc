"""Tests for cutting whole recordings into overlapping pretraining crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from lungsound_ssl.data.recordings import crop_recordings, crop_starts_s
from lungsound_ssl.data.records import (
    FILE_MISSING,
    MISSING_LABEL,
    POOR_QUALITY,
    UNKNOWN_LABEL,
    UNREADABLE,
    ClipRecord,
)
from lungsound_ssl.data.sprsound import PRETRAIN_ALLOWED, read_sprsound


def write_wav(path: Path, seconds: float, sample_rate_hz: int = 4000) -> Path:
    frames = round(seconds * sample_rate_hz)
    soundfile.write(path, np.zeros(frames, dtype=np.int16), sample_rate_hz)
    return path


@pytest.mark.parametrize(
    ("duration_s", "crop_s", "hop_s", "expected"),
    [
        (10.0, 4.0, 2.0, [0.0, 2.0, 4.0, 6.0]),  # last crop ends at 10 s exactly
        (11.0, 4.0, 2.0, [0.0, 2.0, 4.0, 6.0, 7.0]),  # tail crop added for 10 to 11 s
        (3.0, 4.0, 2.0, [0.0]),  # shorter than one crop
        (4.0, 4.0, 1.0, [0.0]),
        (9.0, 2.0, 3.0, [0.0, 3.0, 6.0, 7.0]),  # hop longer than crop leaves gaps
    ],
)
def test_crop_starts_by_hand(duration_s, crop_s, hop_s, expected):
    assert crop_starts_s(duration_s, crop_s, hop_s) == pytest.approx(expected)


def test_crop_paths_measured_with_soundfile(tmp_path):
    path = write_wav(tmp_path / "rec.wav", seconds=5.0)
    crops = crop_recordings([path], crop_seconds=2.0, hop_seconds=1.5)
    assert [crop.clip_id for crop in crops] == ["rec.wav@0", "rec.wav@1500", "rec.wav@3000"]
    assert [(crop.start_s, crop.end_s) for crop in crops] == [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0)]
    assert all(crop.labels is None for crop in crops)
    assert crops[0].attributes == {"recording_id": "rec"}


def test_crop_short_recording_whole(tmp_path):
    path = write_wav(tmp_path / "short.wav", seconds=1.25)
    [crop] = crop_recordings([str(path)], crop_seconds=2.0, hop_seconds=1.0)
    assert (crop.start_s, crop.end_s) == (0.0, 1.25)


def test_crop_durations_given(tmp_path):
    # The file does not exist: the given duration is used without opening it.
    path = tmp_path / "absent.wav"
    crops = crop_recordings([path], crop_seconds=2.0, hop_seconds=2.0, durations={path: 6.0})
    assert [crop.start_s for crop in crops] == [0.0, 2.0, 4.0]


def test_crop_records_shared_attributes(tmp_path):
    path = write_wav(tmp_path / "101_1b1_Al_sc_Meditron.wav", seconds=4.0)
    common = {"patient_id": "101", "recording_id": "101_1b1_Al_sc_Meditron", "device": "Meditron"}
    records = [
        ClipRecord(
            f"{path.name}#{i}",
            path,
            i - 1.0,
            float(i),
            (1, 0, 0),
            None,
            {**common, "cycle_index": str(i)},
        )
        for i in (1, 2, 3)
    ]
    crops = crop_recordings(records, crop_seconds=2.0, hop_seconds=1.0)
    assert [crop.clip_id for crop in crops] == [f"{path.name}@{ms}" for ms in (0, 1000, 2000)]
    assert crops[0].attributes == common
    assert crops[0].exclusion == MISSING_LABEL


def test_crop_single_clip_attributes_dropped(tmp_path):
    path = write_wav(tmp_path / "41064945_5.0_1_p2_2533.wav", seconds=3.0)
    attributes = {"patient_id": "41064945", "event_type": "Squawk", "exclusion_detail": "no label"}
    record = ClipRecord(f"{path.name}#1", path, 0.5, 1.0, None, UNKNOWN_LABEL, attributes)
    crops = crop_recordings([record], crop_seconds=2.0, hop_seconds=1.0)
    assert crops[0].attributes == {"patient_id": "41064945", "recording_id": path.stem}
    assert {crop.exclusion for crop in crops} == {MISSING_LABEL}


def test_crop_missing_and_unreadable_files(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    crops = crop_recordings([tmp_path / "absent.wav", not_audio], crop_seconds=2.0, hop_seconds=1.0)
    assert [(crop.clip_id, crop.exclusion) for crop in crops] == [
        ("absent.wav@0", FILE_MISSING),
        ("notes.wav@0", UNREADABLE),
    ]


def test_crop_skips_records_without_audio(tmp_path):
    record = ClipRecord("x.wav#1", tmp_path / "x.wav", 0.0, 1.0, (1, 0, 0), FILE_MISSING)
    assert crop_recordings([record], crop_seconds=2.0, hop_seconds=1.0) == []


def test_crop_name_clash_raises(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [write_wav(tmp_path / folder / "rec.wav", seconds=1.0) for folder in ("a", "b")]
    with pytest.raises(ValueError, match="crop id prefix 'rec.wav'"):
        crop_recordings(paths, crop_seconds=2.0, hop_seconds=1.0)


@pytest.mark.parametrize(("crop_s", "hop_s"), [(0.0, 1.0), (2.0, 0.0), (2.0, -1.0)])
def test_crop_invalid_lengths_raise(tmp_path, crop_s, hop_s):
    with pytest.raises(ValueError, match="must be"):
        crop_recordings([tmp_path / "x.wav"], crop_seconds=crop_s, hop_seconds=hop_s)


@pytest.mark.real_data
def test_crop_real_sprsound_poor_quality(sprsound_dir):
    records = read_sprsound(sprsound_dir)
    crops = crop_recordings(records, crop_seconds=4.0, hop_seconds=2.0)
    recordings = {record.path for record in records}

    expected_count = 0
    for path in recordings:
        duration_s = soundfile.info(path).duration
        expected_count += len(crop_starts_s(duration_s, 4.0, 2.0))
    assert len(crops) == expected_count
    assert {crop.path for crop in crops} == recordings
    assert all(crop.end_s - crop.start_s == pytest.approx(4.0) for crop in crops)

    poor_paths = {record.path for record in records if record.exclusion == POOR_QUALITY}
    poor_crops = {crop.path for crop in crops if crop.exclusion == POOR_QUALITY}
    assert poor_crops == poor_paths


@pytest.mark.real_data
def test_crop_real_sprsound_pretraining_off(sprsound_dir):
    records = read_sprsound(sprsound_dir)
    for record in records:
        if record.exclusion == POOR_QUALITY:
            record.attributes[PRETRAIN_ALLOWED] = "0"
    crops = crop_recordings(records, crop_seconds=4.0, hop_seconds=2.0)
    poor_paths = {record.path for record in records if record.exclusion == POOR_QUALITY}
    assert not poor_paths & {crop.path for crop in crops}
    assert {crop.exclusion for crop in crops} == {MISSING_LABEL}
