"""Cross-validation folds: no leakage, balanced labels, deterministic, reusable."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lungsound_ssl.data import DataConfig, load_clips
from lungsound_ssl.folds import FoldConfig, assign_folds, read_folds_csv
from lungsound_ssl.synthetic import SyntheticConfig, write_synthetic_dataset


@pytest.fixture(scope="module")
def demo_table(tmp_path_factory):
    folder = write_synthetic_dataset(tmp_path_factory.mktemp("demo"), SyntheticConfig(n_patients=10, clips_per_patient=6))
    table, _ = load_clips(DataConfig(data_dir=str(folder), cache_dir=str(tmp_path_factory.mktemp("cache"))))
    return table


@pytest.mark.real_data
def test_icbhi_report_counts(icbhi_table):
    _, report = icbhi_table
    assert report["n_listed"] == 1969
    assert report["n_decoded"] == 1969
    assert report["sample_rate_counts"] == {"4000": 1016, "10000": 61, "22050": 769, "44100": 123}
    assert report["label_counts_all_labelled"] == {"normal": 1379, "wheeze_only": 260, "crackle_only": 249, "both": 81}
    excluded = sum(report["exclusion_counts"].values())
    assert report["n_trainable"] == 1969 - excluded
    assert sum(report["label_counts"].values()) == report["n_trainable"]


@pytest.mark.real_data
def test_icbhi_folds_patient_disjoint(icbhi_table):
    table, _ = icbhi_table
    assignment = assign_folds(table, FoldConfig())
    assert assignment.group_source == "patient_id"
    frame = assignment.to_frame()
    folds_per_patient = frame.groupby("group")["fold"].nunique()
    assert folds_per_patient.max() == 1
    patients = dict(zip(table.filenames, table.column("patient_id")))
    assert all(patients[n] == g for n, g in zip(assignment.filenames, assignment.groups))


@pytest.mark.real_data
def test_icbhi_fold_label_proportions(icbhi_table):
    table, _ = icbhi_table
    assignment = assign_folds(table, FoldConfig())
    frame = assignment.to_frame().assign(label=assignment.strata)
    overall = frame["label"].value_counts(normalize=True)
    # One ICBHI patient alone contributes about 40 % of the clips labelled
    # "both", and a patient cannot be split, so that class can drift further.
    tolerance = {"normal": 0.05, "wheeze": 0.05, "crackle": 0.05, "both": 0.07}
    for fold, rows in frame.groupby("fold"):
        share = rows["label"].value_counts(normalize=True)
        for label, limit in tolerance.items():
            assert abs(share.get(label, 0.0) - overall[label]) <= limit, (fold, label)


@pytest.mark.real_data
def test_icbhi_official_split(icbhi_table):
    table, _ = icbhi_table
    assignment = assign_folds(table, FoldConfig(split="official"))
    assert assignment.fold_ids == [0]
    train, val, test = assignment.split(0)
    splits = dict(zip(table.filenames, table.column("official_split")))
    assert {splits[assignment.filenames[i]] for i in test} == {"test"}
    assert {splits[assignment.filenames[i]] for i in np.concatenate([train, val])} == {"train"}


def test_folds_deterministic_for_seed(demo_table):
    first = assign_folds(demo_table, FoldConfig(split_seed=3))
    second = assign_folds(demo_table, FoldConfig(split_seed=3))
    other = assign_folds(demo_table, FoldConfig(split_seed=4))
    assert np.array_equal(first.folds, second.folds)
    assert not np.array_equal(first.folds, other.folds)


def test_inner_split_excludes_held_out(demo_table):
    assignment = assign_folds(demo_table, FoldConfig())
    groups = np.asarray(assignment.groups)
    for fold in assignment.fold_ids:
        train, val, test = assignment.split(fold)
        assert len(set(train) | set(val) | set(test)) == len(assignment.filenames)
        assert set(test).isdisjoint(train)
        assert set(test).isdisjoint(val)
        assert set(groups[val]).isdisjoint(groups[train])
        assert set(groups[test]).isdisjoint(groups[val])
        assert (assignment.folds[test] == fold).all()


def test_folds_csv_round_trip(demo_table, tmp_path):
    assignment = assign_folds(demo_table, FoldConfig())
    path = assignment.write_csv(tmp_path)
    frame = pd.read_csv(path)
    assert list(frame.columns[:3]) == ["filename", "group", "fold"]
    reread = read_folds_csv(path, demo_table)
    assert reread.filenames == assignment.filenames
    assert np.array_equal(reread.folds, assignment.folds)
    assert reread.group_source == "patient_id"


def test_folds_csv_for_other_data_rejected(demo_table, tmp_path):
    pd.DataFrame({"filename": ["x.wav"], "group": ["g"], "fold": [0]}).to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(ValueError, match="no fold for"):
        read_folds_csv(tmp_path / "folds.csv", demo_table)


def test_clip_level_folds_warn(demo_table, caplog):
    with caplog.at_level(logging.WARNING, logger="lungsound_ssl.folds"):
        assignment = assign_folds(demo_table, FoldConfig(group_by="none"))
    assert assignment.group_source == "none"
    assert "optimistic" in caplog.text
    assert len(set(assignment.groups)) == len(assignment.filenames)


def test_too_few_groups_rejected(demo_table):
    with pytest.raises(ValueError, match="lower --n_folds"):
        assign_folds(demo_table, FoldConfig(n_folds=11, group_by="patient_id"))


def test_inferred_groups_used_without_ids(tmp_path):
    from lungsound_ssl.data import DataConfig, load_clips

    folder = write_synthetic_dataset(tmp_path / "data", SyntheticConfig(n_patients=8, clips_per_patient=5, seed=2))
    (folder / "metadata.csv").unlink()  # no patient or recording ids left
    table, _ = load_clips(DataConfig(data_dir=str(folder), cache_dir=str(tmp_path / "cache")))
    assignment = assign_folds(table, FoldConfig(n_folds=4))
    assert assignment.group_source == "inferred"
    frame = assignment.to_frame()
    assert frame["group_source"].unique().tolist() == ["inferred"]
    assert frame.groupby("group")["fold"].nunique().max() == 1
    assert frame["group"].str.startswith("inferred_").all()


def test_fold_missing_class_warns(demo_table, caplog):
    with caplog.at_level(logging.WARNING, logger="lungsound_ssl.folds"):
        assignment = assign_folds(demo_table, FoldConfig(n_folds=10, group_by="patient_id"))
    frame = assignment.to_frame().assign(label=assignment.strata)
    classes = set(frame["label"])
    lacking = [fold for fold, rows in frame.groupby("fold") if set(rows["label"]) != classes]
    assert lacking, "with 10 folds of one patient each, some fold should lack a class"
    for fold in lacking:
        assert f"fold {fold} has no clip labelled" in caplog.text
