"""Tests of the log-mel and waveform front-ends against the transformers feature extractors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import ASTFeatureExtractor, Wav2Vec2FeatureExtractor

from lungsound_ssl.cropping import crop_or_pad_batch
from lungsound_ssl.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    LogMelFrontend,
    WaveformNormalizer,
    compute_normalization_stats,
    frames_for_samples,
)

# ASTFeatureExtractor builds a 128-bin bank whose lowest filters are empty and warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")

# The front-end runs the STFT in float32, ASTFeatureExtractor in float64. The
# largest differences after normalisation sit in mel bins whose power is barely
# above the floor in frames with loud content, where float32 rounding of the
# FFT is large relative to the bin. Measured on CPU (torch 2.13, transformers
# 5.25): at most 6e-5 on the clips below, 1.8e-4 over 456 clips. 5e-4 leaves
# room for other FFT back-ends and is 0.02 dB of mel power (5e-4 * 2 * 4.57
# natural-log units). Away from such bins the outputs agree far more closely,
# which the mean difference checks.
ATOL_NORMALISED = 5e-4
MEAN_ATOL_NORMALISED = 1e-5


def load_real_clips(cycles_dir, per_rate: int) -> list[np.ndarray]:
    """Read ``per_rate`` clips of every sample rate in the folder, resampled to 16 kHz float32."""
    by_rate: dict[str, list[str]] = {}
    with open(cycles_dir / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_rate.setdefault(row["sample_rate_hz"], []).append(row["filename"])
    clips = []
    for rate in sorted(by_rate):
        for name in sorted(by_rate[rate])[:per_rate]:
            audio, sample_rate = sf.read(cycles_dir / "train" / name, dtype="float32")
            clips.append(soxr.resample(audio, sample_rate, 16000).astype(np.float32))
    return clips


@pytest.fixture(scope="module")
def real_clips(icbhi_cycles_dir) -> list[np.ndarray]:
    return load_real_clips(icbhi_cycles_dir, per_rate=2)


def extractor_features(waves, **kwargs) -> np.ndarray:
    extractor = ASTFeatureExtractor(**kwargs)
    return np.stack(extractor(waves, sampling_rate=16000, return_tensors="np")["input_values"])


def test_frames_hand_computed():
    assert frames_for_samples(16000, 400, 160) == 98
    assert frames_for_samples(400, 400, 160) == 1
    assert frames_for_samples(399, 400, 160) == 0
    assert frames_for_samples(32000, 400, 160) == 198


def test_frontend_lengths_from_ms():
    frontend = LogMelFrontend(num_frames=10, frame_length_ms=25.0, frame_shift_ms=10.0)
    assert frontend.frame_length == 400
    assert frontend.hop_length == 160
    assert frontend.fft_length == 512


@pytest.mark.real_data
def test_logmel_matches_extractor_per_clip(real_clips):
    frontend = LogMelFrontend(num_frames=1024)
    expected = extractor_features(real_clips)
    for wave, reference in zip(real_clips, expected):
        features, frame_mask = frontend(torch.from_numpy(wave)[None, :])
        assert features.shape == (1, 1024, 128)
        assert int(frame_mask.sum()) == min(frames_for_samples(len(wave), 400, 160), 1024)
        difference = np.abs(features[0].numpy() - reference)
        assert difference.max() < ATOL_NORMALISED
        assert difference.mean() < MEAN_ATOL_NORMALISED


@pytest.mark.real_data
def test_logmel_batch_with_mask_matches_extractor(real_clips):
    # Zero-padded batch with masks must give, row by row, what the extractor
    # computes on each unpadded clip padded to the same number of frames.
    num_samples = max(len(w) for w in real_clips)
    num_frames = frames_for_samples(num_samples, 400, 160)
    waves, masks = crop_or_pad_batch(real_clips, num_samples, mode="zero")
    frontend = LogMelFrontend(num_frames=num_frames, num_mel_bins=64)
    features, frame_mask = frontend(torch.from_numpy(waves), torch.from_numpy(masks))
    expected = extractor_features(real_clips, num_mel_bins=64, max_length=num_frames)
    assert features.shape == expected.shape
    assert np.abs(features.numpy() - expected).max() < ATOL_NORMALISED
    assert frame_mask.sum(dim=1).tolist() == [
        frames_for_samples(len(w), 400, 160) for w in real_clips
    ]


@pytest.mark.real_data
def test_logmel_truncates_like_extractor(real_clips):
    wave = max(real_clips, key=len)
    frontend = LogMelFrontend(num_frames=100)
    features, frame_mask = frontend(torch.from_numpy(wave)[None, :])
    expected = extractor_features([wave], max_length=100)
    assert features.shape == (1, 100, 128)
    assert np.abs(features.numpy() - expected).max() < ATOL_NORMALISED
    assert int(frame_mask.sum()) == 100


@pytest.mark.real_data
def test_logmel_custom_stats_match_extractor(real_clips):
    frontend = LogMelFrontend(num_frames=300, mean=-9.0, std=2.5)
    waves, _ = crop_or_pad_batch(real_clips[:3], 48000, mode="repeat")
    features, _ = frontend(torch.from_numpy(waves))
    expected = extractor_features(list(waves), max_length=300, mean=-9.0, std=2.5)
    assert np.abs(features.numpy() - expected).max() < ATOL_NORMALISED


@pytest.mark.real_data
def test_logmel_autocast_keeps_float32(real_clips):
    frontend = LogMelFrontend(num_frames=200)
    waves, _ = crop_or_pad_batch(real_clips[:2], 32000, mode="repeat")
    batch = torch.from_numpy(waves)
    plain, _ = frontend(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = frontend(batch)
    assert autocast.dtype == torch.float32
    assert torch.equal(plain, autocast)


def test_logmel_short_input_is_padding():
    frontend = LogMelFrontend(num_frames=5)
    features, frame_mask = frontend(torch.randn(2, 300))
    expected_pad = (0.0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    assert frame_mask.sum() == 0
    np.testing.assert_allclose(features.numpy(), expected_pad, rtol=1e-6)


def test_logmel_stats_saved_in_state_dict():
    frontend = LogMelFrontend(num_frames=5)
    frontend.set_normalization(-7.5, 3.0)
    state = frontend.state_dict()
    assert sorted(state) == ["mean", "std"]
    assert float(state["mean"]) == -7.5
    assert float(state["std"]) == 3.0


def test_logmel_rejects_other_rate():
    with pytest.raises(ValueError, match="16000"):
        LogMelFrontend(num_frames=5, sample_rate_hz=8000)


@pytest.mark.real_data
def test_stats_match_naive_numpy(real_clips):
    frontend = LogMelFrontend(num_frames=10, num_mel_bins=64)
    mean, std = compute_normalization_stats(frontend, real_clips)
    # The maximum clip length (16.2 s) is under 2000 frames. The zero frames padded after each clip are dropped.
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=2000, do_normalize=False)
    raw = [
        np.asarray(extractor(w, sampling_rate=16000)["input_values"][0], dtype=np.float64)[
            : frames_for_samples(len(w), 400, 160)
        ]
        for w in real_clips
    ]
    values = np.concatenate([r.ravel() for r in raw])
    assert mean == pytest.approx(values.mean(), rel=1e-4)
    assert std == pytest.approx(values.std(), rel=1e-4)


@pytest.mark.real_data
def test_recomputed_stats_normalise_clips(real_clips):
    # With statistics of the clips themselves, their features have mean 0 and
    # std 0.5, because AST divides by twice the std.
    frontend = LogMelFrontend(num_frames=10, num_mel_bins=64)
    frontend.set_normalization(*compute_normalization_stats(frontend, real_clips))
    values = torch.cat(
        [
            frontend.normalize(frontend.log_mel(torch.from_numpy(w)[None])).flatten()
            for w in real_clips
        ]
    )
    assert float(values.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(values.std()) == pytest.approx(0.5, abs=1e-3)


def test_stats_reject_too_short_clips():
    frontend = LogMelFrontend(num_frames=10)
    with pytest.raises(ValueError, match="no frames"):
        compute_normalization_stats(frontend, [np.zeros(100, dtype=np.float32)])


@pytest.mark.real_data
def test_waveform_norm_matches_extractor(real_clips):
    clips = real_clips[:4]
    num_samples = max(len(w) for w in clips)
    waves, masks = crop_or_pad_batch(clips, num_samples, mode="zero")
    normalised, mask = WaveformNormalizer()(torch.from_numpy(waves), torch.from_numpy(masks))
    expected = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm(list(waves), list(masks))
    assert torch.equal(mask, torch.from_numpy(masks))
    for row, reference in zip(normalised.numpy(), expected):
        np.testing.assert_allclose(row, reference, rtol=0, atol=1e-4)


def test_waveform_norm_hand_computed():
    waveform = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    normalised, _ = WaveformNormalizer(eps=0.0)(waveform, mask)
    # Valid samples 1 and 3: mean 2, population std 1; the padded sample is zeroed.
    assert normalised.tolist() == [[-1.0, 1.0, 0.0]]
