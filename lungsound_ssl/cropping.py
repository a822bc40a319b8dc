"""Fixed-length crops and pads of 1-D waveforms, for data collators.

Every function accepts a 1-D ``numpy.ndarray`` or ``torch.Tensor`` and returns
the same kind. Shapes: L input samples, S samples per crop (``num_samples``),
W windows, B clips. Masks are 0/1 integer arrays (``int64`` / ``torch.long``)
with 1 on samples that come from the clip, in the layout the encoders take as
``attention_mask``.

Short clips are filled up to S samples in one of two ways:

- ``"repeat"``: the clip is tiled, and consecutive copies overlap by a short
  linear cross-fade so that the joint has no click. Every output sample is
  clip content, so the mask is all ones. For single breathing cycles this
  usually works better than zero padding.
- ``"zero"``: the clip is followed by zeros, and the mask is 0 on the zeros.

Long clips are cropped: at random positions in training (``rng`` given), at
the centre, or as sliding windows whose predictions the caller averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SAMPLE_RATE_HZ = 16000
"""Sample rate of every waveform the encoders take, in Hz."""

PAD_MODES = ("repeat", "zero")
EVAL_CROP_MODES = ("center", "sliding")

Wave = np.ndarray | torch.Tensor


def seconds_to_samples(seconds: float, sample_rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Convert a duration in seconds to a whole number of samples (rounded)."""
    return round(seconds * sample_rate_hz)


def _check_wave(wave: Wave, num_samples: int) -> None:
    if not isinstance(wave, (np.ndarray, torch.Tensor)):
        raise TypeError(f"wave must be a numpy array or torch tensor, got {type(wave).__name__}")
    if wave.ndim != 1:
        raise ValueError(
            f"wave must be 1-D (mono samples), got shape {tuple(wave.shape)}; mix down to mono first"
        )
    if wave.shape[0] == 0:
        raise ValueError("wave is empty (0 samples); drop zero-length clips before cropping")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")


def _check_pad_mode(mode: str) -> None:
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")


def _take(wave: Wave, index: np.ndarray) -> Wave:
    if isinstance(wave, torch.Tensor):
        return wave[torch.from_numpy(index).to(wave.device)]
    return wave[index]


def _as_gain(wave: Wave, gain: np.ndarray) -> Wave:
    if isinstance(wave, torch.Tensor):
        return torch.from_numpy(gain).to(device=wave.device, dtype=wave.dtype)
    return gain.astype(wave.dtype, copy=False)


def _mask(wave: Wave, num_samples: int, num_valid: int) -> Wave:
    mask = np.zeros(num_samples, dtype=np.int64)
    mask[:num_valid] = 1
    if isinstance(wave, torch.Tensor):
        return torch.from_numpy(mask).to(wave.device)
    return mask


def repeat_pad(wave: Wave, num_samples: int, *, fade_samples: int = 160) -> Wave:
    """Tile a clip shorter than ``num_samples`` up to ``num_samples`` samples.

    Consecutive copies overlap by ``fade_samples``, across which the earlier
    copy fades out and the next one fades in linearly; the two gains sum to 1.
    The fade is shortened to half the clip length for very short clips.

    Shape: (L,) -> (S,) with L <= S.
    """
    _check_wave(wave, num_samples)
    length = wave.shape[0]
    if length >= num_samples:
        raise ValueError(
            f"repeat_pad needs a clip shorter than {num_samples} samples, got {length}; crop it instead"
        )

    fade = max(0, min(int(fade_samples), length // 2))
    step = length - fade
    positions = np.arange(num_samples)
    copy_index = positions // step
    offset = positions - copy_index * step

    # Positions in the first ``fade`` samples of every copy after the first lie
    # in an overlap: they mix the head of this copy with the tail of the previous one.
    in_overlap = (copy_index > 0) & (offset < fade)
    ramp = np.arange(1, fade + 1, dtype=np.float64) / (fade + 1)
    head_gain = np.ones(num_samples)
    head_gain[in_overlap] = ramp[offset[in_overlap]]
    tail_index = np.where(in_overlap, offset + step, 0)
    tail_gain = np.where(in_overlap, 1.0 - head_gain, 0.0)

    head = _take(wave, offset) * _as_gain(wave, head_gain)
    tail = _take(wave, tail_index) * _as_gain(wave, tail_gain)
    return head + tail


def zero_pad(wave: Wave, num_samples: int) -> Wave:
    """Append zeros to a clip shorter than ``num_samples``. Shape: (L,) -> (S,)."""
    _check_wave(wave, num_samples)
    length = wave.shape[0]
    if length >= num_samples:
        raise ValueError(
            f"zero_pad needs a clip shorter than {num_samples} samples, got {length}; crop it instead"
        )
    if isinstance(wave, torch.Tensor):
        return torch.nn.functional.pad(wave, (0, num_samples - length))
    return np.pad(wave, (0, num_samples - length))


def crop_or_pad(
    wave: Wave,
    num_samples: int,
    *,
    mode: str = "repeat",
    rng: np.random.Generator | None = None,
    fade_samples: int = 160,
) -> tuple[Wave, Wave]:
    """Return a crop of exactly ``num_samples`` samples and its mask.

    A longer clip is cropped at a random offset drawn from ``rng`` (training),
    or at the centre when ``rng`` is None (evaluation). A shorter clip is
    padded by ``mode``: ``"repeat"`` (cross-faded tiling, mask all ones) or
    ``"zero"`` (zeros after the clip, mask 0 on them).

    Shapes: (L,) -> crop (S,), mask (S,).
    """
    _check_wave(wave, num_samples)
    _check_pad_mode(mode)
    length = wave.shape[0]

    if length > num_samples:
        if rng is None:
            start = (length - num_samples) // 2
        else:
            start = int(rng.integers(0, length - num_samples + 1))
        return wave[start : start + num_samples], _mask(wave, num_samples, num_samples)

    if length == num_samples:
        return wave, _mask(wave, num_samples, num_samples)

    if mode == "repeat":
        return repeat_pad(wave, num_samples, fade_samples=fade_samples), _mask(
            wave, num_samples, num_samples
        )
    return zero_pad(wave, num_samples), _mask(wave, num_samples, length)


def _stack(items: Sequence[Wave]) -> Wave:
    if isinstance(items[0], torch.Tensor):
        return torch.stack(list(items))
    return np.stack(items)


def eval_windows(
    wave: Wave,
    num_samples: int,
    *,
    mode: str = "center",
    hop_samples: int | None = None,
    pad_mode: str = "repeat",
    fade_samples: int = 160,
) -> tuple[Wave, Wave]:
    """Cut the evaluation windows of one clip; average their outputs per clip.

    ``mode="center"`` returns one centre crop. ``mode="sliding"`` returns
    windows starting every ``hop_samples`` samples (default ``num_samples // 2``),
    plus a last window that ends at the clip's end so that no tail is left
    out. A clip no longer than ``num_samples`` gives one window, padded by
    ``pad_mode``.

    Shapes: (L,) -> windows (W, S), masks (W, S).
    """
    _check_wave(wave, num_samples)
    _check_pad_mode(pad_mode)
    if mode not in EVAL_CROP_MODES:
        raise ValueError(f"evaluation crop mode must be one of {EVAL_CROP_MODES}, got {mode!r}")
    length = wave.shape[0]

    if length <= num_samples or mode == "center":
        window, mask = crop_or_pad(
            wave, num_samples, mode=pad_mode, rng=None, fade_samples=fade_samples
        )
        return _stack([window]), _stack([mask])

    hop = num_samples // 2 if hop_samples is None else int(hop_samples)
    if hop <= 0:
        raise ValueError(f"hop_samples must be positive, got {hop_samples}")
    starts = list(range(0, length - num_samples + 1, hop))
    if starts[-1] + num_samples < length:
        starts.append(length - num_samples)
    windows = [wave[start : start + num_samples] for start in starts]
    masks = [_mask(wave, num_samples, num_samples) for _ in starts]
    return _stack(windows), _stack(masks)


def crop_or_pad_batch(
    waves: Sequence[Wave],
    num_samples: int,
    *,
    mode: str = "repeat",
    rng: np.random.Generator | None = None,
    fade_samples: int = 160,
) -> tuple[Wave, Wave]:
    """Apply :func:`crop_or_pad` to every clip and stack the results.

    Shapes: B clips of (L_i,) -> crops (B, S), masks (B, S).
    """
    if len(waves) == 0:
        raise ValueError("waves is empty; a batch needs at least one clip")
    pairs = [
        crop_or_pad(w, num_samples, mode=mode, rng=rng, fade_samples=fade_samples) for w in waves
    ]
    return _stack([p[0] for p in pairs]), _stack([p[1] for p in pairs])


def eval_windows_batch(
    waves: Sequence[Wave],
    num_samples: int,
    *,
    mode: str = "center",
    hop_samples: int | None = None,
    pad_mode: str = "repeat",
    fade_samples: int = 160,
) -> tuple[Wave, Wave, Wave]:
    """Cut the evaluation windows of several clips into one batch.

    Returns the windows, their masks and, for each window, the index of its
    clip in ``waves``, so that outputs can be averaged per clip, for example
    with ``torch.zeros(B, C).index_add_(0, clip_index, logits)`` divided by
    the window counts.

    Shapes: B clips of (L_i,) -> windows (sum W_i, S), masks (sum W_i, S),
    clip_index (sum W_i,).
    """
    if len(waves) == 0:
        raise ValueError("waves is empty; a batch needs at least one clip")
    windows, masks, clip_index = [], [], []
    for index, wave in enumerate(waves):
        w, m = eval_windows(
            wave,
            num_samples,
            mode=mode,
            hop_samples=hop_samples,
            pad_mode=pad_mode,
            fade_samples=fade_samples,
        )
        windows.append(w)
        masks.append(m)
        clip_index.extend([index] * w.shape[0])
    if isinstance(windows[0], torch.Tensor):
        return (
            torch.cat(windows),
            torch.cat(masks),
            torch.tensor(clip_index, device=windows[0].device),
        )
    return np.concatenate(windows), np.concatenate(masks), np.asarray(clip_index, dtype=np.int64)
