"""Tests of contrastive pretraining: the two-view collator, the entry point, its outputs and resuming.

The runs use a one-layer AST of hidden size 32 on 1 s crops and a small
synthetic set, so each pretraining run takes seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.cropping import seconds_to_samples
from lungsound_ssl.data import DataConfig, load_clips
from lungsound_ssl.data.recordings import crop_starts_s
from lungsound_ssl.encoders import AudioEncoder, build_encoder, load_encoder_config
from lungsound_ssl.pretraining import ClipAudioDataset, PretrainArguments, TwoViewCollator
from lungsound_ssl.run_pretrain import load_extra_folders, resolve_checkpoint
from lungsound_ssl.synthetic import SyntheticConfig, write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_entry_point():
    """Import pretrain/run.py, a script outside the package, under a name no other test uses."""
    spec = importlib.util.spec_from_file_location("pretrain_run", REPO_ROOT / "pretrain" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = load_entry_point().main

pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")

PRESET = REPO_ROOT / "configs" / "pretrain" / "ast-tiny.yaml"
N_CLIPS = 24
LAUNCH_TIMEOUT_S = 300
TINY_ENCODER = {
    "architecture": "ast",
    "clip_seconds": 1.0,
    "num_mel_bins": 32,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's training on one thread, as ``accelerate launch`` runs a CPU process.

    With two threads on two busy cores the tiny runs took 10 times longer (OpenMP waits).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretraining")


@pytest.fixture(scope="module")
def synthetic_dir(workdir) -> Path:
    config = SyntheticConfig(
        n_patients=6, clips_per_patient=N_CLIPS // 6, min_seconds=0.5, max_seconds=2.5, seed=3
    )
    return write_synthetic_dataset(workdir / "synthetic", config)


@pytest.fixture(scope="module")
def cache_dir(workdir) -> Path:
    return workdir / "cache"


@pytest.fixture(scope="module")
def tiny_encoder_yaml(workdir) -> Path:
    path = workdir / "tiny-encoder.yaml"
    path.write_text(yaml.safe_dump(TINY_ENCODER))
    return path


@pytest.fixture(scope="module")
def table(synthetic_dir, cache_dir):
    return load_clips(DataConfig(data_dir=str(synthetic_dir), cache_dir=str(cache_dir)))[0]


def run_args(data_dir, output_dir, cache_dir, encoder_yaml, *extra: str) -> list[str]:
    return [
        "--config", str(PRESET),
        "--encoder", str(encoder_yaml),
        "--data_dir", str(data_dir),
        "--cache_dir", str(cache_dir),
        "--output_dir", str(output_dir),
        "--max_steps", "4",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--warmup_steps", "1",
        "--logging_steps", "1",
        "--eval_steps", "2",
        "--save_steps", "2",
        "--health_clips", "16",
        "--probe_clips", str(N_CLIPS),
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(synthetic_dir, cache_dir, tiny_encoder_yaml, workdir) -> Path:
    """Four steps with checkpoints at steps 2 and 4."""
    output_dir = workdir / "full"
    assert main(run_args(synthetic_dir, output_dir, cache_dir, tiny_encoder_yaml)) == 0
    return output_dir


def make_collator(seed: int = 0) -> TwoViewCollator:
    config = load_encoder_config("ast-tiny", clip_seconds=1.0)
    return TwoViewCollator(
        config.clip_samples, config.pad_mode, config.fade_samples, AugmentConfig(), seed
    )


def encoder_state_in_checkpoint(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The encoder weights inside a Trainer checkpoint of the contrastive model."""
    state = load_file(checkpoint / "model.safetensors")
    return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


# --- dataset and collator -------------------------------------------------------------------


def test_dataset_audio_equals_table(table):
    indices = table.pretrain_indices()
    dataset = ClipAudioDataset([table], [indices])
    for position in (0, 5, len(dataset) - 1):
        assert np.array_equal(dataset[position]["audio"], table.audio(indices[position]))


def test_dataset_items_carry_no_labels(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    assert set(dataset[0]) == {"audio", "index"}


def test_collator_views_shape(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    batch = make_collator()([dataset[i] for i in range(6)])
    samples = seconds_to_samples(1.0)
    for key in ("view_a", "view_b", "mask_a", "mask_b"):
        assert tuple(batch[key].shape) == (6, samples), key
    assert batch["view_a"].dtype == torch.float32


def test_collator_views_differ(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    batch = make_collator()([dataset[i] for i in range(6)])
    # Every clip's two views differ (other crop offset or other augmentation).
    per_clip_difference = (batch["view_a"] - batch["view_b"]).abs().amax(dim=1)
    assert bool((per_clip_difference > 1e-4).all())


def test_collator_same_positions_same_views(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    items = [dataset[i] for i in (3, 1, 4, 0)]
    first, second = make_collator()(items), make_collator()(items)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_collator_other_positions_other_views(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    first = make_collator()([dataset[i] for i in (3, 1, 4, 0)])
    # Same clips, but the batch seed also depends on the order of the positions.
    second = make_collator()([dataset[i] for i in (1, 3, 4, 0)])
    assert not torch.equal(first["view_a"][1], second["view_a"][0])


def test_collator_seed_changes_views(table):
    dataset = ClipAudioDataset([table], [table.pretrain_indices()])
    items = [dataset[i] for i in range(4)]
    assert not torch.equal(make_collator(0)(items)["view_a"], make_collator(1)(items)["view_a"])


# --- options --------------------------------------------------------------------------------


def test_unknown_yaml_key_raises(tmp_path, synthetic_dir):
    config = tmp_path / "bad.yaml"
    config.write_text(PRESET.read_text() + "projection_dims: 64\n")
    with pytest.raises(ValueError, match="projection_dims"):
        main(
            [
                "--config",
                str(config),
                "--data_dir",
                str(synthetic_dir),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="loss must be one of"):
        PretrainArguments(loss="infonce")


def test_hop_without_crop_raises():
    with pytest.raises(ValueError, match="extra_hop_seconds needs extra_crop_seconds"):
        PretrainArguments(extra_hop_seconds=1.0)


def test_resume_last_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint-N folder"):
        resolve_checkpoint("last", tmp_path)


# --- extra data folders ---------------------------------------------------------------------


def test_extra_folder_recording_crops(tmp_path, synthetic_dir, cache_dir):
    extra_dir = write_synthetic_dataset(
        tmp_path / "extra", SyntheticConfig(n_patients=2, clips_per_patient=3, seed=9)
    )
    args = PretrainArguments(
        extra_data_dirs=[str(extra_dir)], extra_crop_seconds=1.0, extra_hop_seconds=0.5
    )
    data_config = DataConfig(data_dir=str(synthetic_dir), cache_dir=str(cache_dir))
    (folder,) = load_extra_folders(args, data_config)

    names = pd.read_csv(extra_dir / "train.csv")["filename"]
    durations = [sf.info(str(extra_dir / "train" / name)).duration for name in names]
    expected = sum(len(crop_starts_s(d, 1.0, 0.5)) for d in durations)
    assert len(folder.table.pretrain_indices()) == expected


def test_extra_folder_crops_unlabelled(tmp_path, synthetic_dir, cache_dir):
    extra_dir = write_synthetic_dataset(
        tmp_path / "extra", SyntheticConfig(n_patients=2, clips_per_patient=3, seed=9)
    )
    args = PretrainArguments(extra_data_dirs=[str(extra_dir)], extra_crop_seconds=1.0)
    data_config = DataConfig(data_dir=str(synthetic_dir), cache_dir=str(cache_dir))
    (folder,) = load_extra_folders(args, data_config)
    assert folder.report["n_trainable"] == 0


def test_extra_folder_same_as_data_dir_raises(synthetic_dir, cache_dir):
    args = PretrainArguments(extra_data_dirs=[str(synthetic_dir)])
    with pytest.raises(ValueError, match="given twice"):
        load_extra_folders(args, DataConfig(data_dir=str(synthetic_dir), cache_dir=str(cache_dir)))


# --- the entry point ------------------------------------------------------------------------


def test_main_writes_outputs(full_run):
    for name in ("run_config.yaml", "pretraining_data.json", "data_report.json", "run_info.json",
                 "lungsound_encoder.json", "config.json", "model.safetensors"):  # fmt: skip
        assert (full_run / name).is_file(), name


def test_saved_encoder_equals_trained(full_run):
    loaded = AudioEncoder.from_pretrained(full_run)
    trained = encoder_state_in_checkpoint(full_run / "checkpoint-4")
    loaded_state = loaded.state_dict()
    assert set(trained) <= set(loaded_state)
    for name, value in trained.items():
        assert torch.equal(loaded_state[name], value), name


def test_saved_encoder_outputs_identical(full_run, tiny_encoder_yaml):
    loaded = AudioEncoder.from_pretrained(full_run).eval()
    reference = build_encoder(load_encoder_config(tiny_encoder_yaml))
    reference.load_state_dict(encoder_state_in_checkpoint(full_run / "checkpoint-4"))
    reference.eval()
    waveforms = (
        torch.randn(3, seconds_to_samples(1.0), generator=torch.Generator().manual_seed(0)) * 0.1
    )
    with torch.no_grad():
        assert torch.equal(loaded(waveforms).pooled, reference(waveforms).pooled)


def test_run_config_resolved(full_run):
    config = yaml.safe_load((full_run / "run_config.yaml").read_text())
    assert config["pretrain"]["encoder"].endswith("tiny-encoder.yaml")
    assert config["training"]["max_steps"] == 4


def test_pretraining_data_counts(full_run):
    info = json.loads((full_run / "pretraining_data.json").read_text())
    assert info["folders"][0]["n_clips"] == N_CLIPS


def test_health_logged_before_and_after(full_run):
    info = json.loads((full_run / "pretraining_data.json").read_text())
    assert (info["initial_metrics"]["step"], info["final_metrics"]["step"]) == (0, 4)
    for key in (
        "eval_alignment",
        "eval_uniformity",
        "eval_contrastive_top1",
        "eval_probe_macro_auroc",
    ):
        assert np.isfinite(info["final_metrics"][key]), key


@pytest.fixture(scope="module")
def resumed_run(full_run, synthetic_dir, cache_dir, tiny_encoder_yaml, workdir) -> Path:
    """A run stopped after its first checkpoint, then resumed with ``--resume_from_checkpoint last``.

    The stopped run's folder contains what the full run had written by step 2, so it is copied from there.
    """
    output_dir = workdir / "resumed"
    output_dir.mkdir()
    shutil.copytree(full_run / "checkpoint-2", output_dir / "checkpoint-2")
    args = run_args(
        synthetic_dir, output_dir, cache_dir, tiny_encoder_yaml, "--resume_from_checkpoint", "last"
    )
    assert main(args) == 0
    return output_dir


def test_resume_equals_uninterrupted(full_run, resumed_run):
    resumed = AudioEncoder.from_pretrained(resumed_run).state_dict()
    uninterrupted = AudioEncoder.from_pretrained(full_run).state_dict()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


def test_resume_keeps_initial_health(resumed_run):
    info = json.loads((resumed_run / "pretraining_data.json").read_text())
    assert info["initial_metrics"]["step"] == 0


def test_unlabelled_data_pretrains(tmp_path, synthetic_dir, cache_dir, tiny_encoder_yaml):
    # train.csv lists every clip with empty label cells, so no clip has a label.
    data_dir = tmp_path / "unlabelled"
    shutil.copytree(synthetic_dir / "train", data_dir / "train")
    labels = pd.read_csv(synthetic_dir / "train.csv")
    labels[["normal", "wheeze", "crackle"]] = None
    labels.to_csv(data_dir / "train.csv", index=False)
    output_dir = tmp_path / "out"
    assert (
        main(run_args(data_dir, output_dir, cache_dir, tiny_encoder_yaml, "--max_steps", "2")) == 0
    )

    info = json.loads((output_dir / "pretraining_data.json").read_text())
    assert info["folders"][0]["n_clips"] == N_CLIPS
    assert "eval_probe_macro_auroc" not in info["final_metrics"]
    assert (
        AudioEncoder.from_pretrained(output_dir).config.hidden_size == TINY_ENCODER["hidden_size"]
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_two_processes_equal_one(tmp_path, synthetic_dir, cache_dir, tiny_encoder_yaml):
    # Without augmentation, and with crops longer than every clip (at most 2.5 s), both views are
    # the deterministic repeat-padded clip, so the two runs train on the same global batches.
    common = run_args(synthetic_dir, tmp_path / "unused", cache_dir, tiny_encoder_yaml,
                      "--augment_enabled", "false", "--clip_seconds", "3.0", "--max_steps", "2",
                      "--eval_strategy", "no", "--save_strategy", "no", "--health_clips", "0", "--probe_clips", "0")  # fmt: skip
    assert (
        main([*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"])
        == 0
    )

    # NOTE: `accelerate launch --cpu --num_processes 2` starts one process in accelerate 1.16;
    # --multi_gpu launches through torchrun, and ACCELERATE_USE_CPU keeps both processes on the CPU.
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        str(REPO_ROOT / "pretrain" / "run.py"),
        *common, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4",
    ]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    assert logged_losses(tmp_path / "two") == pytest.approx(
        logged_losses(tmp_path / "one"), rel=1e-5
    )
    single_process = AudioEncoder.from_pretrained(tmp_path / "one").state_dict()
    two_processes = AudioEncoder.from_pretrained(tmp_path / "two").state_dict()
    for name, value in single_process.items():
        torch.testing.assert_close(two_processes[name], value, rtol=0, atol=1e-5, msg=name)


def test_norm_stats_recomputed_and_saved(tmp_path, synthetic_dir, cache_dir, tiny_encoder_yaml, table):
    from lungsound_ssl.features import AUDIOSET_MEAN, AUDIOSET_STD

    output_dir = tmp_path / "norm"
    args = run_args(synthetic_dir, output_dir, cache_dir, tiny_encoder_yaml, "--norm_stats_clips", "10000",
                    "--max_steps", "1", "--save_steps", "1", "--eval_steps", "1")
    assert main(args) == 0
    loaded = AudioEncoder.from_pretrained(output_dir)
    assert loaded.config.norm_mean != pytest.approx(AUDIOSET_MEAN)
    assert loaded.config.norm_std != pytest.approx(AUDIOSET_STD)

    # Every clip is sampled (10000 > the set), so the statistics equal a plain numpy pass over all of them.
    raw = [loaded.frontend.log_mel(torch.from_numpy(table.audio(i))[None]).squeeze(0).numpy()
           for i in table.pretrain_indices()]
    values = np.concatenate([r.ravel() for r in raw])
    assert loaded.config.norm_mean == pytest.approx(float(values.mean()), rel=1e-3)
    assert loaded.config.norm_std == pytest.approx(float(values.std()), rel=1e-3)
