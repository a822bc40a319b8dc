"""Cleaning: every kind of bad clip gets its reason, odd formats still load, inputs stay untouched."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lungsound_ssl.data import records as R
from lungsound_ssl.data.report import build_report
from lungsound_ssl.data.table import build_clip_table
from lungsound_ssl.data.takehome import read_takehome


def _noise(seconds, rate, seed, channels=1):
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return (0.2 * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture()
def bad_folder(tmp_path):
    """A take-home folder with one clip per cleaning outcome."""
    data = tmp_path / "data"
    audio = data / "train"
    audio.mkdir(parents=True)
    rows = []

    def add(name, label):
        rows.append({"filename": name, "label": label})

    sf.write(audio / "good.wav", _noise(1.0, 4000, 0), 4000, subtype="PCM_16")
    add("good", "normal")
    add("missing", "wheeze")
    (audio / "text.wav").write_text("this is not audio")
    add("text", "crackle")
    sf.write(audio / "empty.wav", np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    add("empty", "normal")
    sf.write(audio / "short.wav", _noise(0.05, 8000, 1), 8000, subtype="PCM_16")
    add("short", "normal")
    sf.write(audio / "silent.wav", np.zeros(8000, dtype=np.float32), 8000, subtype="PCM_16")
    add("silent", "normal")
    nan_clip = _noise(1.0, 8000, 2)
    nan_clip[100] = np.nan
    sf.write(audio / "nan.wav", nan_clip, 8000, subtype="FLOAT")
    add("nan", "wheeze")
    clipped = np.clip(_noise(1.0, 8000, 3) * 20, -1, 1)
    sf.write(audio / "clipped.wav", clipped, 8000, subtype="PCM_16")
    add("clipped", "crackle")
    sf.write(audio / "original.wav", _noise(1.0, 8000, 4), 8000, subtype="PCM_16")
    add("original", "normal")
    sf.write(audio / "copy.wav", _noise(1.0, 8000, 4), 8000, subtype="PCM_16")
    add("copy", "wheeze")
    sf.write(audio / "conflict.wav", _noise(1.0, 8000, 5), 8000, subtype="PCM_16")
    add("conflict", "normal+wheeze")
    sf.write(audio / "unknown.wav", _noise(1.0, 8000, 6), 8000, subtype="PCM_16")
    add("unknown", "rales")
    sf.write(audio / "stereo24.wav", _noise(1.0, 22050, 7, channels=2), 22050, subtype="PCM_24")
    add("stereo24", "wheeze & crackle")
    sf.write(audio / "float44k.wav", _noise(2.0, 44100, 8), 44100, subtype="FLOAT")
    add("float44k", "both")
    sf.write(audio / "eight.flac", _noise(1.0, 16000, 9), 16000, subtype="PCM_16")
    add("eight.flac", "crackle")

    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    return data


EXPECTED = {
    "good.wav": "",
    "missing.wav": R.FILE_MISSING,
    "text.wav": R.UNREADABLE,
    "empty.wav": R.ZERO_LENGTH,
    "short.wav": R.TOO_SHORT,
    "silent.wav": R.SILENT,
    "nan.wav": R.NON_FINITE,
    "clipped.wav": R.CLIPPED,
    "original.wav": "",
    "copy.wav": R.DUPLICATE,
    "conflict.wav": R.LABEL_CONFLICT,
    "unknown.wav": R.UNKNOWN_LABEL,
    "stereo24.wav": "",
    "float44k.wav": "",
    "eight.flac": "",
}


def _folder_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_each_bad_clip_gets_its_reason(bad_folder, tmp_path):
    table, _ = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    outcome = dict(zip(table.dataset["filename"], table.dataset["exclusion"]))
    for name, reason in EXPECTED.items():
        assert outcome[name] == reason, name


def test_pretraining_keeps_label_problems(bad_folder, tmp_path):
    table, _ = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    pretrain = dict(zip(table.dataset["filename"], table.dataset["pretrain_ok"]))
    assert pretrain["conflict.wav"] is True
    assert pretrain["unknown.wav"] is True
    assert pretrain["clipped.wav"] is True
    assert pretrain["copy.wav"] is False
    assert pretrain["silent.wav"] is False
    assert pretrain["text.wav"] is False


def test_stereo_and_float_files_load(bad_folder, tmp_path):
    table, _ = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    rows = {row["filename"]: row for row in table.dataset}
    stereo, floating = rows["stereo24.wav"], rows["float44k.wav"]
    assert stereo["source_channels"] == 2
    assert stereo["source_subtype"] == "PCM_24"
    assert len(stereo["audio"]) == 16000
    assert floating["source_sample_rate_hz"] == 44100
    assert len(floating["audio"]) == 32000
    assert (stereo["normal"], stereo["wheeze"], stereo["crackle"]) == (0, 1, 1)


def test_report_counts_and_disagreements(bad_folder, tmp_path):
    table, disagreements = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    report = build_report(table, disagreements)
    expected_counts = {}
    for reason in EXPECTED.values():
        if reason:
            expected_counts[reason] = expected_counts.get(reason, 0) + 1
    assert report["exclusion_counts"] == expected_counts
    assert report["n_trainable"] == 5
    assert report["downmixed_multichannel"] == 1
    assert disagreements == [
        {"filename": "copy.wav", "duplicate_of": "original.wav", "labels": "wheeze", "labels_of_kept": "normal"}
    ]
    assert {e["filename"] for e in report["excluded"]} == {n for n, r in EXPECTED.items() if r}
    json.dumps(report)


def test_cache_reused_and_inputs_untouched(bad_folder, tmp_path):
    before = _folder_digest(bad_folder)
    records = read_takehome(bad_folder)
    first, _ = build_clip_table(records, data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache")
    second, _ = build_clip_table(records, data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache")
    assert first.fingerprint == second.fingerprint
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert _folder_digest(bad_folder) == before


def test_cache_invalidated_by_changed_file(bad_folder, tmp_path):
    first, _ = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    sf.write(bad_folder / "train" / "good.wav", _noise(1.5, 4000, 10), 4000, subtype="PCM_16")
    second, _ = build_clip_table(
        read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=tmp_path / "cache"
    )
    assert first.fingerprint != second.fingerprint
    index = second.filenames.index("good.wav")
    assert second.audio(index).size == 24000


def test_cache_inside_data_folder_rejected(bad_folder):
    with pytest.raises(ValueError, match="inside the data folder"):
        build_clip_table(
            read_takehome(bad_folder), data_dir=bad_folder, data_format="takehome", cache_dir=bad_folder / "cache"
        )
