"""Tests of fixed-length crops, pads and evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungsound_ssl.cropping import (
    crop_or_pad,
    crop_or_pad_batch,
    eval_windows,
    eval_windows_batch,
    repeat_pad,
    seconds_to_samples,
)


def naive_repeat_pad(wave: np.ndarray, num_samples: int, fade: int) -> np.ndarray:
    """Overlap-add copies of the clip, one sample at a time, as the reference."""
    fade = min(fade, len(wave) // 2)
    step = len(wave) - fade
    out = np.zeros(num_samples + 2 * len(wave))
    ramp_in = np.arange(1, fade + 1) / (fade + 1)
    start = 0
    copy = 0
    while start < num_samples:
        gain = np.ones(len(wave))
        if copy > 0:
            gain[:fade] = ramp_in
        gain[len(wave) - fade :] *= 1 - ramp_in  # faded out under the next copy
        for i in range(len(wave)):
            out[start + i] += wave[i] * gain[i]
        start += step
        copy += 1
    return out[:num_samples]


def test_seconds_to_samples_rounds():
    assert seconds_to_samples(2.0) == 32000
    assert seconds_to_samples(0.010) == 160
    assert seconds_to_samples(1.00003) == 16000


def test_crop_random_is_slice():
    wave = np.arange(1000, dtype=np.float32)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        crop, mask = crop_or_pad(wave, 300, rng=rng)
        start = int(crop[0])
        starts.add(start)
        assert crop.shape == (300,)
        assert np.array_equal(crop, wave[start : start + 300])
        assert mask.sum() == 300
    assert len(starts) > 10


def test_crop_random_reaches_both_ends():
    wave = np.arange(5, dtype=np.float32)
    rng = np.random.default_rng(1)
    starts = {int(crop_or_pad(wave, 3, rng=rng)[0][0]) for _ in range(200)}
    assert starts == {0, 1, 2}


def test_crop_center_without_rng():
    wave = np.arange(11, dtype=np.float32)
    crop, mask = crop_or_pad(wave, 4)
    assert crop.tolist() == [3.0, 4.0, 5.0, 6.0]
    assert mask.tolist() == [1, 1, 1, 1]


def test_exact_length_unchanged():
    wave = np.linspace(-1, 1, 64).astype(np.float32)
    crop, mask = crop_or_pad(wave, 64, mode="zero")
    assert np.array_equal(crop, wave)
    assert mask.sum() == 64


def test_zero_pad_content_and_mask():
    wave = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    crop, mask = crop_or_pad(wave, 6, mode="zero")
    assert crop.tolist() == [0.5, -0.25, 1.0, 0.0, 0.0, 0.0]
    assert mask.tolist() == [1, 1, 1, 0, 0, 0]
    assert mask.dtype == np.int64


@pytest.mark.parametrize(
    ("length", "num_samples", "fade"),
    [(100, 1000, 16), (7, 50, 160), (1, 5, 3), (30, 31, 4), (64, 500, 0), (200, 250, 100)],
)
def test_repeat_pad_matches_naive(length, num_samples, fade):
    wave = np.random.default_rng(length).standard_normal(length)
    padded = repeat_pad(wave, num_samples, fade_samples=fade)
    expected = naive_repeat_pad(wave, num_samples, fade)
    assert padded.shape == (num_samples,)
    np.testing.assert_allclose(padded, expected, rtol=0, atol=1e-12)


def test_repeat_pad_constant_stays_constant():
    # The cross-fade gains sum to 1, so a constant clip has no dip at the joints.
    padded, mask = crop_or_pad(np.full(50, 0.3), 400, mode="repeat", fade_samples=10)
    np.testing.assert_allclose(padded, 0.3, rtol=0, atol=1e-12)
    assert mask.sum() == 400


def test_repeat_pad_keeps_clip_between_joints():
    wave = np.random.default_rng(3).standard_normal(100)
    padded = repeat_pad(wave, 400, fade_samples=10)
    # The first copy is untouched up to the first overlap at sample 90. The
    # second copy then runs unfaded from sample 100 to the next overlap.
    np.testing.assert_array_equal(padded[:90], wave[:90])
    np.testing.assert_array_equal(padded[100:180], wave[10:90])


def test_repeat_pad_rejects_long_clip():
    with pytest.raises(ValueError, match="crop it instead"):
        repeat_pad(np.zeros(10), 10)


def test_torch_matches_numpy():
    wave = np.random.default_rng(4).standard_normal(70).astype(np.float32)
    for mode in ("repeat", "zero"):
        crop_np, mask_np = crop_or_pad(wave, 256, mode=mode, fade_samples=8)
        crop_pt, mask_pt = crop_or_pad(torch.from_numpy(wave), 256, mode=mode, fade_samples=8)
        assert isinstance(crop_pt, torch.Tensor)
        assert mask_pt.dtype == torch.long
        np.testing.assert_allclose(crop_pt.numpy(), crop_np, rtol=0, atol=1e-6)
        assert np.array_equal(mask_pt.numpy(), mask_np)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        crop_or_pad(np.zeros(0), 10)
    with pytest.raises(ValueError, match="1-D"):
        crop_or_pad(np.zeros((2, 10)), 10)
    with pytest.raises(ValueError, match="pad mode"):
        crop_or_pad(np.zeros(5), 10, mode="reflect")
    with pytest.raises(ValueError, match="positive"):
        crop_or_pad(np.zeros(5), 0)


def test_sliding_windows_cover_tail():
    wave = np.arange(11, dtype=np.float32)
    windows, masks = eval_windows(wave, 4, mode="sliding", hop_samples=3)
    # Starts 0, 3, 6 leave sample 10 out, so a last window starts at 11 - 4 = 7.
    assert windows[:, 0].tolist() == [0.0, 3.0, 6.0, 7.0]
    assert windows.shape == (4, 4)
    assert masks.sum() == 16


def test_sliding_windows_exact_fit():
    wave = np.arange(10, dtype=np.float32)
    windows, _ = eval_windows(wave, 4, mode="sliding", hop_samples=3)
    assert windows[:, 0].tolist() == [0.0, 3.0, 6.0]


def test_sliding_default_hop_is_half():
    wave = np.arange(16, dtype=np.float32)
    windows, _ = eval_windows(wave, 8, mode="sliding")
    assert windows[:, 0].tolist() == [0.0, 4.0, 8.0]


def test_center_window_equals_crop():
    wave = np.random.default_rng(5).standard_normal(1000)
    windows, masks = eval_windows(wave, 300, mode="center")
    crop, _ = crop_or_pad(wave, 300)
    assert windows.shape == (1, 300)
    assert np.array_equal(windows[0], crop)
    assert masks.shape == (1, 300)


def test_short_clip_one_padded_window():
    wave = np.ones(50)
    windows, masks = eval_windows(wave, 80, mode="sliding", pad_mode="zero")
    assert windows.shape == (1, 80)
    assert masks.sum() == 50


def test_batch_stacks_crops():
    waves = [np.ones(30), np.ones(100), np.ones(64)]
    crops, masks = crop_or_pad_batch(waves, 64, mode="zero", rng=np.random.default_rng(0))
    assert crops.shape == (3, 64)
    assert masks.sum(axis=1).tolist() == [30, 64, 64]


def test_window_batch_clip_index():
    waves = [torch.arange(10.0), torch.arange(3.0), torch.arange(7.0)]
    windows, masks, clip_index = eval_windows_batch(waves, 4, mode="sliding", hop_samples=3)
    # Clip 0: starts 0, 3, 6; clip 1: one padded window; clip 2: starts 0, 3.
    assert clip_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert windows.shape == (6, 4)
    assert masks.shape == (6, 4)
    assert windows[:, 0].tolist() == [0.0, 3.0, 6.0, 0.0, 0.0, 3.0]
