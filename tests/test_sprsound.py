"""Tests for the SPRSound reader on the real subset and on generated annotations."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lungsound_ssl.data.records import FILE_MISSING, MISSING_LABEL, POOR_QUALITY, UNKNOWN_LABEL
from lungsound_ssl.data.sprsound import PRETRAIN_ALLOWED, SPRSoundOptions, read_sprsound

# Default mapping written out independently of the reader: (normal, wheeze, crackle).
EXPECTED_LABELS = {
    "Normal": (1, 0, 0),
    "Fine Crackle": (0, 0, 1),
    "Coarse Crackle": (0, 0, 1),
    "Wheeze": (0, 1, 0),
    "Wheeze+Crackle": (0, 1, 1),
    "Rhonchi": (0, 1, 0),
    "Stridor": (0, 1, 0),
}

STEM = "41064945_5.0_1_p2_2533"


def load_json_files(sprsound_dir: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sprsound_dir.rglob("*.json")}


@pytest.fixture(scope="module")
def sprsound_records(sprsound_dir):
    return read_sprsound(sprsound_dir)


@pytest.mark.real_data
def test_real_label_counts_match_json(sprsound_dir, sprsound_records):
    expected = Counter()
    for content in load_json_files(sprsound_dir).values():
        if content["record_annotation"] != "Poor Quality":
            expected.update(EXPECTED_LABELS[event["type"]] for event in content["event_annotation"])
    labelled = Counter(r.labels for r in sprsound_records if r.exclusion is None)
    assert labelled == expected


@pytest.mark.real_data
def test_real_events_per_recording(sprsound_dir, sprsound_records):
    expected = {
        stem: len(content["event_annotation"]) or 1
        for stem, content in load_json_files(sprsound_dir).items()
    }
    counts = Counter(record.attributes["recording_id"] for record in sprsound_records)
    assert dict(counts) == expected


@pytest.mark.real_data
def test_real_poor_quality_records(sprsound_dir, sprsound_records):
    poor_stems = {
        stem
        for stem, content in load_json_files(sprsound_dir).items()
        if content["record_annotation"] == "Poor Quality"
    }
    poor = [record for record in sprsound_records if record.exclusion == POOR_QUALITY]
    assert {record.attributes["recording_id"] for record in poor} == poor_stems
    assert len(poor) == len(poor_stems)
    assert all(record.labels is None for record in poor)
    assert all(record.start_s is None and record.end_s is None for record in poor)
    assert all(PRETRAIN_ALLOWED not in record.attributes for record in poor)


@pytest.mark.real_data
def test_real_poor_quality_pretraining_off(sprsound_dir):
    options = SPRSoundOptions(use_poor_quality_for_pretraining=False)
    records = read_sprsound(sprsound_dir, options)
    flagged = {r.clip_id for r in records if r.attributes.get(PRETRAIN_ALLOWED) == "0"}
    poor = {r.clip_id for r in records if r.exclusion == POOR_QUALITY}
    assert flagged == poor
    assert len(poor) > 0


@pytest.mark.real_data
def test_real_event_fields(sprsound_dir, sprsound_records):
    content = load_json_files(sprsound_dir)[STEM]
    event = content["event_annotation"][0]
    record = next(r for r in sprsound_records if r.clip_id == f"{STEM}.wav#1")
    assert record.path.name == f"{STEM}.wav"
    assert record.path.is_file()
    assert record.start_s == float(event["start"]) / 1000
    assert record.end_s == float(event["end"]) / 1000
    assert record.labels == EXPECTED_LABELS[event["type"]]
    assert record.attributes == {
        "patient_id": "41064945",
        "age": "5.0",
        "sex": "1",
        "chest_location": "p2",
        "recording_id": STEM,
        "record_annotation": content["record_annotation"],
        "event_type": event["type"],
    }


def write_sprsound(folder: Path, stem: str, content: dict | str, audio_folder: Path | None = None):
    """Write a JSON annotation and a short silent recording of 8 kHz."""
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / f"{stem}.json").write_text(text)
    audio_folder = audio_folder or folder
    audio_folder.mkdir(parents=True, exist_ok=True)
    soundfile.write(audio_folder / f"{stem}.wav", np.zeros(8000, dtype=np.int16), 8000)


def test_times_as_strings_and_numbers(tmp_path):
    events = [
        {"start": "1251", "end": "2674", "type": "Normal"},
        {"start": 100, "end": 250.5, "type": "Fine Crackle"},
    ]
    write_sprsound(tmp_path, STEM, {"record_annotation": "DAS", "event_annotation": events})
    first, second = read_sprsound(tmp_path)
    assert (first.start_s, first.end_s) == (1.251, 2.674)
    assert (second.start_s, second.end_s) == (0.1, 0.2505)
    assert second.labels == (0, 0, 1)
    assert second.clip_id == f"{STEM}.wav#2"


def test_recording_annotation_key_accepted(tmp_path):
    events = [{"start": 0, "end": 900, "type": "Wheeze"}]
    write_sprsound(tmp_path, STEM, {"recording_annotation": "CAS", "event_annotation": events})
    [record] = read_sprsound(tmp_path)
    assert record.attributes["record_annotation"] == "CAS"
    assert record.labels == (0, 1, 0)


def test_conflicting_record_keys_raise(tmp_path):
    content = {"record_annotation": "CAS", "recording_annotation": "Normal", "event_annotation": []}
    write_sprsound(tmp_path, STEM, content)
    with pytest.raises(ValueError, match="different values"):
        read_sprsound(tmp_path)


@pytest.mark.parametrize("event_type", ["Rhonchi", "Stridor"])
def test_cas_mapped_to_wheeze_by_default(tmp_path, event_type):
    events = [{"start": "0", "end": "500", "type": event_type}]
    write_sprsound(tmp_path, STEM, {"record_annotation": "CAS", "event_annotation": events})
    [record] = read_sprsound(tmp_path)
    assert record.labels == (0, 1, 0)
    assert record.exclusion is None


def test_rhonchi_mapping_switched_off(tmp_path):
    events = [
        {"start": "0", "end": "500", "type": "Rhonchi"},
        {"start": "500", "end": "900", "type": "Stridor"},
    ]
    write_sprsound(tmp_path, STEM, {"record_annotation": "CAS", "event_annotation": events})
    rhonchi, stridor = read_sprsound(tmp_path, SPRSoundOptions(rhonchi_as_wheeze=False))
    assert rhonchi.labels is None
    assert rhonchi.exclusion == UNKNOWN_LABEL
    assert stridor.labels == (0, 1, 0)


def test_unknown_event_type_excluded(tmp_path, caplog):
    events = [{"start": "0", "end": "500", "type": "Squawk"}]
    write_sprsound(tmp_path, STEM, {"record_annotation": "CAS", "event_annotation": events})
    with caplog.at_level("WARNING"):
        [record] = read_sprsound(tmp_path)
    assert record.exclusion == UNKNOWN_LABEL
    assert record.labels is None
    assert "'Squawk'" in caplog.text


def test_separate_folders_matched_by_stem(tmp_path):
    events = [{"start": "0", "end": "500", "type": "Normal"}]
    content = {"record_annotation": "Normal", "event_annotation": events}
    write_sprsound(tmp_path / "json", STEM, content, audio_folder=tmp_path / "audio" / "train")
    [record] = read_sprsound(tmp_path)
    assert record.path == tmp_path / "audio" / "train" / f"{STEM}.wav"
    assert record.exclusion is None


def test_json_without_audio_marked_missing(tmp_path):
    events = [{"start": "0", "end": "500", "type": "Normal"}]
    write_sprsound(tmp_path, STEM, {"record_annotation": "Normal", "event_annotation": events})
    (tmp_path / f"{STEM}.wav").unlink()
    [record] = read_sprsound(tmp_path)
    assert record.exclusion == FILE_MISSING
    assert record.labels == (1, 0, 0)


def test_audio_without_json_unlabelled(tmp_path):
    events = [{"start": "0", "end": "500", "type": "Normal"}]
    write_sprsound(tmp_path, STEM, {"record_annotation": "Normal", "event_annotation": events})
    soundfile.write(tmp_path / "40138127_14.7_0_p1_137.wav", np.zeros(80, dtype=np.int16), 8000)
    records = {record.clip_id: record for record in read_sprsound(tmp_path)}
    whole = records["40138127_14.7_0_p1_137.wav"]
    assert whole.exclusion == MISSING_LABEL
    assert whole.attributes["patient_id"] == "40138127"


def test_empty_events_unlabelled(tmp_path):
    write_sprsound(tmp_path, STEM, {"record_annotation": "Normal", "event_annotation": []})
    [record] = read_sprsound(tmp_path)
    assert record.clip_id == f"{STEM}.wav"
    assert record.exclusion == MISSING_LABEL


def test_other_json_files_ignored(tmp_path):
    events = [{"start": "0", "end": "500", "type": "Normal"}]
    write_sprsound(tmp_path, STEM, {"record_annotation": "Normal", "event_annotation": events})
    (tmp_path / "dataset_info.json").write_text('{"version": 1}')
    assert len(read_sprsound(tmp_path)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "must contain a JSON object"),
        ({"event_annotation": []}, "has no 'record_annotation'"),
        ({"record_annotation": "Normal"}, "has no 'event_annotation'"),
        ({"record_annotation": "Normal", "event_annotation": {}}, "must be a list"),
        (
            {"record_annotation": "DAS", "event_annotation": [{"start": "0", "end": "5"}]},
            "no 'type'",
        ),
        (
            {
                "record_annotation": "DAS",
                "event_annotation": [{"start": "a", "end": "5", "type": "Normal"}],
            },
            "must be a number of milliseconds",
        ),
        (
            {
                "record_annotation": "DAS",
                "event_annotation": [{"start": "9", "end": "5", "type": "Normal"}],
            },
            "is not after start",
        ),
    ],
)
def test_malformed_json_raises(tmp_path, content, message):
    write_sprsound(tmp_path, STEM, content)
    with pytest.raises(ValueError, match=f"{STEM}.json.*{message}"):
        read_sprsound(tmp_path)


def test_no_annotations_raises(tmp_path):
    soundfile.write(tmp_path / f"{STEM}.wav", np.zeros(80, dtype=np.int16), 8000)
    (tmp_path / "dataset_info.json").write_text('{"version": 1}')
    with pytest.raises(ValueError, match="no SPRSound JSON annotations"):
        read_sprsound(tmp_path)
