"""Tests of the waveform and feature augmentations."""

from __future__ import annotations

import dataclasses
import math

import pytest
import soundfile as sf
import torch

from lungsound_ssl.augment import (
    AddNoise,
    AugmentConfig,
    MixWithOther,
    RandomGain,
    SpecAugment,
    TimeShift,
    WaveformAugmenter,
)
from lungsound_ssl.config import parse_config

# Factories with probability 1, so every clip is augmented.
WAVEFORM_MODULES = {
    "gain": lambda: RandomGain(-6.0, 6.0, probability=1.0),
    "white_noise": lambda: AddNoise(10.0, 20.0, color="white", probability=1.0),
    "pink_noise": lambda: AddNoise(10.0, 20.0, color="pink", probability=1.0),
    "random_noise": lambda: AddNoise(10.0, 20.0, color="random", probability=1.0),
    "shift": lambda: TimeShift(max_fraction=0.3, probability=1.0),
    "mix": lambda: MixWithOther(0.05, 0.2, probability=1.0),
}
DISABLED_MODULES = {
    "gain": lambda: RandomGain(probability=0.0),
    "noise": lambda: AddNoise(probability=0.0),
    "shift": lambda: TimeShift(probability=0.0),
    "mix": lambda: MixWithOther(probability=0.0),
}
# Config fields that switch each waveform augmentation on.
AUGMENTATION_FLAGS = ("gain_enabled", "noise_enabled", "shift_enabled", "mix_enabled")


def make_waveforms(
    batch: int = 4, samples: int = 2000, dtype=torch.float32, seed: int = 0
) -> torch.Tensor:
    """Sine tones of different pitch plus a little noise, so clips differ from one another."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(samples, dtype=torch.float64) / 4000.0
    pitches = 100.0 + 50.0 * torch.arange(batch, dtype=torch.float64)[:, None]
    tones = torch.sin(2 * math.pi * pitches * time) + 0.05 * torch.randn(
        batch, samples, generator=generator
    )
    return tones.to(dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-clip SNR in dB of ``noisy`` against ``clean``, computed in float64."""
    clean, noisy = clean.double(), noisy.double()
    return 10 * torch.log10(clean.pow(2).mean(dim=1) / (noisy - clean).pow(2).mean(dim=1))


# ---------------------------------------------------------------------------
# Properties every waveform augmentation must have
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_waveform_keeps_shape_and_dtype(name, dtype):
    waveforms = make_waveforms(dtype=dtype)
    output = WAVEFORM_MODULES[name]()(waveforms, generator=seeded(0))
    assert output.shape == waveforms.shape
    assert output.dtype == dtype


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
def test_waveform_deterministic_for_seed(name):
    module = WAVEFORM_MODULES[name]()
    waveforms = make_waveforms()
    first = module(waveforms, generator=seeded(7))
    second = module(waveforms, generator=seeded(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
def test_waveform_differs_between_seeds(name):
    module = WAVEFORM_MODULES[name]()
    waveforms = make_waveforms()
    assert not torch.equal(
        module(waveforms, generator=seeded(1)), module(waveforms, generator=seeded(2))
    )


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
def test_waveform_changes_every_clip(name):
    waveforms = make_waveforms()
    output = WAVEFORM_MODULES[name]()(waveforms, generator=seeded(3))
    changed = (output != waveforms).any(dim=1)
    assert changed.all(), f"unchanged clips: {(~changed).nonzero().flatten().tolist()}"


@pytest.mark.parametrize("name", DISABLED_MODULES)
def test_waveform_probability_zero_is_identity(name):
    waveforms = make_waveforms()
    assert torch.equal(DISABLED_MODULES[name]()(waveforms, generator=seeded(0)), waveforms)


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
def test_waveform_global_rng_reproducible(name):
    module = WAVEFORM_MODULES[name]()
    waveforms = make_waveforms()
    torch.manual_seed(11)
    first = module(waveforms)
    torch.manual_seed(11)
    assert torch.equal(module(waveforms), first)


@pytest.mark.parametrize("module", [RandomGain(), AddNoise(), TimeShift(), MixWithOther()])
def test_waveform_rejects_one_dimensional_input(module):
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        module(torch.randn(100))


def test_probability_selects_about_that_share():
    # 2000 clips at probability 0.3: the count is binomial with sd about 20.5,
    # so +-100 is a margin of almost 5 sd.
    waveforms = torch.ones(2000, 8)
    output = RandomGain(1.0, 2.0, probability=0.3)(waveforms, generator=seeded(0))
    changed = int((output[:, 0] != 1.0).sum())
    assert abs(changed - 600) < 100


# ---------------------------------------------------------------------------
# RandomGain
# ---------------------------------------------------------------------------


def test_gain_within_db_range():
    waveforms = make_waveforms(batch=64, dtype=torch.float64)
    output = RandomGain(-6.0, 3.0, probability=1.0)(waveforms, generator=seeded(0))
    gain_db = 20 * torch.log10(output.abs().amax(dim=1) / waveforms.abs().amax(dim=1))
    assert gain_db.min().item() >= -6.0 - 1e-9
    assert gain_db.max().item() <= 3.0 + 1e-9


def test_gain_is_one_factor_per_clip():
    waveforms = make_waveforms(dtype=torch.float64)
    output = RandomGain(probability=1.0)(waveforms, generator=seeded(0))
    ratio = output / waveforms
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


# ---------------------------------------------------------------------------
# AddNoise
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("target_db", [0.0, 12.5, 30.0])
def test_noise_hits_requested_snr(color, target_db):
    # Tolerance 0.01 dB: the noise is rescaled to the exact power, so only
    # float32 rounding separates the measured SNR from the target.
    waveforms = make_waveforms(batch=8)
    output = AddNoise(target_db, target_db, color=color, probability=1.0)(
        waveforms, generator=seeded(0)
    )
    measured = snr_db(waveforms, output)
    assert (measured - target_db).abs().max().item() < 0.01


def test_noise_snr_within_range():
    waveforms = make_waveforms(batch=64)
    output = AddNoise(10.0, 20.0, probability=1.0)(waveforms, generator=seeded(0))
    measured = snr_db(waveforms, output)
    assert measured.min().item() >= 10.0 - 0.01
    assert measured.max().item() <= 20.0 + 0.01


def test_noise_silent_clip_unchanged():
    waveforms = torch.zeros(2, 500)
    output = AddNoise(probability=1.0)(waveforms, generator=seeded(0))
    assert torch.equal(output, waveforms)


def octave_power_ratio(noise: torch.Tensor) -> float:
    """Power in FFT bins [800, 1600) over power in bins [100, 200), averaged over clips."""
    power = torch.fft.rfft(noise.double(), dim=1).abs().pow(2).mean(dim=0)
    return (power[800:1600].sum() / power[100:200].sum()).item()


def test_pink_noise_equal_power_per_octave():
    # Pink noise has the same power in every octave, white noise 2x more per
    # octave, so three octaves up white has 8x the power and pink 1x.
    impulses = torch.zeros(32, 4096)
    impulses[:, 0] = 1.0  # an impulse gives a non-zero power to set the noise level from
    pink = AddNoise(0.0, 0.0, color="pink", probability=1.0)(impulses, generator=seeded(0))
    white = AddNoise(0.0, 0.0, color="white", probability=1.0)(impulses, generator=seeded(0))
    assert octave_power_ratio(pink - impulses) == pytest.approx(1.0, rel=0.15)
    assert octave_power_ratio(white - impulses) == pytest.approx(8.0, rel=0.15)


@pytest.mark.real_data
def test_noise_snr_on_real_clips(icbhi_cycles_dir):
    clips = []
    for name in ("clip_0001.wav", "clip_0002.wav", "clip_0003.wav"):
        audio, _ = sf.read(icbhi_cycles_dir / "train" / name, dtype="float32", always_2d=False)
        clips.append(torch.from_numpy(audio[:2000]))
    waveforms = torch.stack(clips)
    output = AddNoise(20.0, 20.0, color="random", probability=1.0)(waveforms, generator=seeded(0))
    assert (snr_db(waveforms, output) - 20.0).abs().max().item() < 0.01


# ---------------------------------------------------------------------------
# TimeShift
# ---------------------------------------------------------------------------


def test_shift_is_circular_roll_within_limit():
    waveforms = torch.arange(4 * 100, dtype=torch.float32).reshape(4, 100)
    output = TimeShift(max_fraction=0.2, probability=1.0)(waveforms, generator=seeded(0))
    for clip, shifted in zip(waveforms, output):
        # Every value is unique, so the position of the first sample gives the shift.
        shift = int((shifted == clip[0]).nonzero().item())
        signed_shift = shift if shift <= 50 else shift - 100
        assert abs(signed_shift) <= 20
        assert torch.equal(shifted, torch.roll(clip, signed_shift))


def test_shift_zero_fraction_is_identity():
    waveforms = make_waveforms()
    assert torch.equal(
        TimeShift(max_fraction=0.0, probability=1.0)(waveforms, generator=seeded(0)), waveforms
    )


# ---------------------------------------------------------------------------
# MixWithOther
# ---------------------------------------------------------------------------


def test_mix_adds_one_other_clip_at_low_ratio():
    # Clip i is 1 on samples [10 i, 10 i + 10) and 0 elsewhere. All clips have
    # the same RMS, so the output is (1 - r) x_i + r x_j for one partner j.
    batch = 6
    waveforms = torch.zeros(batch, 10 * batch, dtype=torch.float64)
    for i in range(batch):
        waveforms[i, 10 * i : 10 * i + 10] = 1.0
    output = MixWithOther(0.05, 0.2, probability=1.0)(waveforms, generator=seeded(4))

    segments = output.reshape(batch, batch, 10)[:, :, 0]  # (B, S) -> (B, clip, 10) -> first sample
    partners = []
    for i in range(batch):
        others = [j for j in range(batch) if j != i and segments[i, j] > 0]
        assert len(others) == 1
        ratio = segments[i, others[0]].item()
        assert 0.05 <= ratio <= 0.2
        assert segments[i, i].item() == pytest.approx(1 - ratio)
        partners.append(others[0])
    assert sorted(partners) == list(range(batch))


def test_mix_matches_partner_rms():
    # A partner 100x louder must still get only the drawn energy share.
    waveforms = torch.stack([torch.ones(50), torch.full((50,), 100.0)]).double()
    output = MixWithOther(0.2, 0.2, probability=1.0)(waveforms, generator=seeded(0))
    torch.testing.assert_close(output[0], torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(output[1], torch.full((50,), 100.0, dtype=torch.float64))


def test_mix_single_clip_unchanged():
    waveforms = make_waveforms(batch=1)
    assert torch.equal(
        MixWithOther(0.1, 0.2, probability=1.0)(waveforms, generator=seeded(0)), waveforms
    )


# ---------------------------------------------------------------------------
# SpecAugment
# ---------------------------------------------------------------------------


def make_features(
    batch: int = 4, frames: int = 50, bins: int = 16, dtype=torch.float32
) -> torch.Tensor:
    return torch.randn(batch, frames, bins, generator=seeded(5)).to(dtype) + 3.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_specaugment_keeps_shape_and_dtype(dtype):
    features = make_features(dtype=dtype)
    output = SpecAugment(probability=1.0)(features, generator=seeded(0))
    assert output.shape == features.shape
    assert output.dtype == dtype


def test_specaugment_deterministic_for_seed():
    features = make_features()
    module = SpecAugment(probability=1.0)
    assert torch.equal(module(features, generator=seeded(9)), module(features, generator=seeded(9)))


def test_specaugment_changes_every_clip():
    features = make_features()
    output = SpecAugment(time_mask_count=2, time_mask_max_frames=10, probability=1.0)(
        features, generator=seeded(0)
    )
    assert (output != features).flatten(1).any(dim=1).all()


def test_specaugment_probability_zero_is_identity():
    features = make_features()
    assert torch.equal(SpecAugment(probability=0.0)(features, generator=seeded(0)), features)


def test_specaugment_zero_width_is_identity():
    features = make_features()
    module = SpecAugment(time_mask_max_frames=0, freq_mask_max_bins=0, probability=1.0)
    assert torch.equal(module(features, generator=seeded(0)), features)


def test_specaugment_masks_are_bands_within_limits():
    # With time masks only, masked cells form whole frames: at most 2 bands of
    # at most 5 frames each, filled with the clip's mean.
    features = make_features(batch=16)
    module = SpecAugment(
        time_mask_count=2, time_mask_max_frames=5, freq_mask_count=0, probability=1.0
    )
    output = module(features, generator=seeded(0))
    changed = output != features
    masked_frames = changed.any(dim=2)  # (B, T, F) -> (B, T)
    assert torch.equal(changed, masked_frames[:, :, None].expand_as(changed))
    assert masked_frames.sum(dim=1).max().item() <= 10
    means = features.mean(dim=(1, 2), keepdim=True).expand_as(features)
    assert torch.equal(output[changed], means[changed])


def test_specaugment_zero_fill():
    features = make_features()
    module = SpecAugment(
        time_mask_count=0, freq_mask_count=1, freq_mask_max_bins=4, probability=1.0, fill="zero"
    )
    output = module(features, generator=seeded(0))
    changed = output != features
    assert changed.any()
    assert (output[changed] == 0).all()


def test_specaugment_rejects_two_dimensional_input():
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        SpecAugment()(torch.randn(10, 4))


# ---------------------------------------------------------------------------
# AugmentConfig and WaveformAugmenter
# ---------------------------------------------------------------------------


def test_config_all_augmentations_on_by_default():
    config = AugmentConfig()
    assert config.augment_enabled
    for flag in (*AUGMENTATION_FLAGS, "spec_augment_enabled"):
        assert getattr(config, flag), flag


def test_config_every_field_has_help():
    missing = [f.name for f in dataclasses.fields(AugmentConfig) if not f.metadata.get("help")]
    assert missing == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"gain_probability": 1.5},
        {"gain_min_db": 3.0, "gain_max_db": -3.0},
        {"noise_color": "brown"},
        {"mix_max_ratio": 1.5},
        {"shift_max_fraction": -0.1},
        {"time_mask_max_frames": -1},
        {"spec_augment_fill": "median"},
    ],
)
def test_config_rejects_invalid_values(overrides):
    with pytest.raises(ValueError):
        AugmentConfig(**overrides)


def test_config_parses_from_command_line():
    (config,) = parse_config((AugmentConfig,), ["--noise_color", "pink", "--mix_enabled", "false"])
    assert config.noise_color == "pink"
    assert config.mix_enabled is False


def test_augmenter_default_order():
    kinds = [type(step).__name__ for step in WaveformAugmenter(AugmentConfig()).steps]
    assert kinds == ["MixWithOther", "TimeShift", "RandomGain", "AddNoise"]


def test_augmenter_master_switch_off_is_identity():
    waveforms = make_waveforms()
    augmenter = WaveformAugmenter(AugmentConfig(augment_enabled=False))
    assert len(augmenter.steps) == 0
    assert torch.equal(augmenter(waveforms, generator=seeded(0)), waveforms)


@pytest.mark.parametrize("flag", AUGMENTATION_FLAGS)
def test_augmenter_single_flag(flag):
    all_off = {name: False for name in AUGMENTATION_FLAGS}
    always = {
        "gain_probability": 1.0,
        "noise_probability": 1.0,
        "shift_probability": 1.0,
        "mix_probability": 1.0,
    }
    waveforms = make_waveforms()

    disabled = WaveformAugmenter(AugmentConfig(**all_off, **always))
    enabled = WaveformAugmenter(AugmentConfig(**{**all_off, flag: True}, **always))

    assert torch.equal(disabled(waveforms, generator=seeded(0)), waveforms)
    assert not torch.equal(enabled(waveforms, generator=seeded(0)), waveforms)


def test_augmenter_deterministic_for_seed():
    waveforms = make_waveforms()
    augmenter = WaveformAugmenter(AugmentConfig())
    assert torch.equal(
        augmenter(waveforms, generator=seeded(21)), augmenter(waveforms, generator=seeded(21))
    )


def test_specaugment_from_config_respects_switch():
    features = make_features()
    module = SpecAugment.from_config(AugmentConfig(spec_augment_enabled=False))
    assert torch.equal(module(features, generator=seeded(0)), features)
