"""Feature front-ends: batched 16 kHz waveforms in, encoder inputs out.

Shapes: B batch, S samples, T frames, F mel bins.

- ``LogMelFrontend`` (AST): (B, S) -> (B, T, F), the Kaldi-style log-mel
  filterbank of ``transformers.ASTFeatureExtractor`` (its NumPy path, which
  runs without torchaudio), padded or truncated to a fixed number of frames
  and normalised as ``(x - mean) / (2 * std)``.
- ``WaveformNormalizer`` (wav2vec2): (B, S) -> (B, S), zero mean and unit
  variance per clip over its valid samples, as ``Wav2Vec2FeatureExtractor``
  does with ``do_normalize=True``.

Both are ``torch.nn.Module`` objects without trainable parameters. Their
constants are buffers, so they run on whatever device the batch is on. Both
return ``(values, mask)`` where the mask is 1 on frames or samples computed
from clip content and 0 on padding.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from transformers.audio_utils import mel_filter_bank, window_function

from lungsound_ssl.cropping import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

# Defaults of ASTFeatureExtractor in transformers 5.x: log-mel mean and std of
# AudioSet, which every public AST checkpoint was trained with.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# Kaldi fbank constants that ASTFeatureExtractor passes to
# transformers.audio_utils.spectrogram: float32 machine epsilon as mel floor,
# and a pre-emphasis coefficient of 0.97.
KALDI_MEL_FLOOR = float(np.finfo(np.float32).eps)
KALDI_PREEMPHASIS = 0.97


def frames_for_samples(num_samples: int, frame_length: int, hop_length: int) -> int:
    """Count the frames that fit entirely inside ``num_samples`` samples.

    This is Kaldi's ``snip_edges=True`` framing, which ASTFeatureExtractor
    uses: no padding at either end.
    """
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // hop_length


def valid_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Count the valid samples per clip, assuming valid samples come first.

    Shape: (B, S) -> (B,). Cropping with ``zero`` padding produces such masks.
    """
    return attention_mask.to(torch.long).sum(dim=-1)


class LogMelFrontend(nn.Module):
    """Kaldi-style log-mel filterbank with ASTFeatureExtractor's defaults.

    Each frame goes through these steps: remove the DC offset, apply
    pre-emphasis (0.97), multiply by a symmetric window, and take the power
    spectrum of an FFT padded to the next power of two. A Kaldi mel filter
    bank follows, then a floor at float32 epsilon and the natural log. There
    is no dither. Frames are then padded (with 0, before
    normalisation, as ASTFeatureExtractor pads) or truncated to
    ``num_frames``, and normalised as ``(x - mean) / (2 * std)``.

    The STFT runs in float32 with autocast disabled, whatever the input
    dtype, so bf16 or fp16 training does not degrade the features.

    Args:
        num_frames: Frames per output, the AST's ``max_length``.
        num_mel_bins: Mel bins F.
        frame_length_ms: Analysis window length in ms (25 in Kaldi and AST).
        frame_shift_ms: Hop between frames in ms (10 in Kaldi and AST).
        mean: Normalisation mean of the raw log-mel values.
        std: Normalisation standard deviation of the raw log-mel values.
        min_frequency_hz: Lower edge of the lowest mel filter.
        max_frequency_hz: Upper edge of the highest mel filter.
        window_name: Window function name for ``transformers.audio_utils.window_function``.
            ASTFeatureExtractor uses a symmetric ``"hann"`` window, not
            Kaldi's default ``"povey"``.
        sample_rate_hz: Sample rate of the input; must be 16000.

    Shapes: waveform (B, S), attention_mask (B, S) -> features (B, T, F), frame_mask (B, T).
    """

    def __init__(
        self,
        num_frames: int,
        num_mel_bins: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        min_frequency_hz: float = 20.0,
        max_frequency_hz: float = SAMPLE_RATE_HZ / 2,
        window_name: str = "hann",
        sample_rate_hz: int = SAMPLE_RATE_HZ,
    ) -> None:
        super().__init__()
        if sample_rate_hz != SAMPLE_RATE_HZ:
            raise ValueError(
                f"sample_rate_hz must be {SAMPLE_RATE_HZ}, got {sample_rate_hz}; resample the audio first"
            )
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        if std <= 0:
            raise ValueError(f"normalisation std must be positive, got {std}")

        self.num_frames = int(num_frames)
        self.num_mel_bins = int(num_mel_bins)
        self.frame_length = round(frame_length_ms * sample_rate_hz / 1000)
        self.hop_length = round(frame_shift_ms * sample_rate_hz / 1000)
        # Kaldi pads every frame to the next power of two before the FFT (round_to_power_of_two).
        self.fft_length = 2 ** math.ceil(math.log2(self.frame_length))

        with warnings.catch_warnings():
            # With 128 bins the lowest Kaldi filters are narrower than one FFT
            # bin and stay all zero; ASTFeatureExtractor builds the same bank.
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            mel = mel_filter_bank(
                num_frequency_bins=self.fft_length // 2 + 1,
                num_mel_filters=self.num_mel_bins,
                min_frequency=min_frequency_hz,
                max_frequency=max_frequency_hz,
                sampling_rate=sample_rate_hz,
                norm=None,
                mel_scale="kaldi",
                triangularize_in_mel_space=True,
            )
        window = window_function(self.frame_length, window_name, periodic=False)

        self.register_buffer(
            "mel_filters", torch.tensor(mel, dtype=torch.float32), persistent=False
        )
        self.register_buffer("window", torch.tensor(window, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))

    def set_normalization(self, mean: float, std: float) -> None:
        """Replace the normalisation statistics, for example with ones from training data."""
        if not std > 0:
            raise ValueError(f"normalisation std must be positive, got {std}")
        self.mean.fill_(float(mean))
        self.std.fill_(float(std))

    def frame_mask(
        self, attention_mask: torch.Tensor | None, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Mark the output frames that lie entirely within each clip's valid samples.

        A frame counts as valid when all its samples are valid, which yields
        the frame count ASTFeatureExtractor computes on the unpadded clip.
        Shape: (B, S) -> (B, T).
        """
        frame_index = torch.arange(self.num_frames, device=device)
        if attention_mask is None:
            return torch.ones(batch_size, self.num_frames, dtype=torch.long, device=device)
        lengths = valid_lengths(attention_mask).to(device)
        frame_end = frame_index * self.hop_length + self.frame_length
        return (frame_end[None, :] <= lengths[:, None]).to(torch.long)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Compute the raw (unnormalised, unpadded) log-mel filterbank.

        Shape: (B, S) -> (B, T_S, F) with T_S = frames_for_samples(S, ...).
        """
        if waveform.ndim != 2:
            raise ValueError(
                f"waveform must have shape (batch, samples), got {tuple(waveform.shape)}"
            )
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            waveform = waveform.float()
            batch_size, num_samples = waveform.shape
            if num_samples < self.frame_length:
                return waveform.new_zeros(batch_size, 0, self.num_mel_bins)

            frames = waveform.unfold(
                -1, self.frame_length, self.hop_length
            )  # (B, S) -> (B, T, frame_length)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            # Kaldi pre-emphasis: y[0] = x[0] * (1 - k), y[n] = x[n] - k * x[n-1].
            frames = torch.cat(
                [
                    frames[..., :1] * (1 - KALDI_PREEMPHASIS),
                    frames[..., 1:] - KALDI_PREEMPHASIS * frames[..., :-1],
                ],
                dim=-1,
            )
            frames = frames * self.window
            spectrum = torch.fft.rfft(
                frames, n=self.fft_length
            )  # (B, T, fft_length // 2 + 1), complex
            # real^2 + imag^2 skips the square root that abs() would compute and pow(2) undo.
            power = spectrum.real.pow(2) + spectrum.imag.pow(2)
            mel = torch.matmul(power, self.mel_filters)  # (B, T, F)
            return torch.log(torch.clamp(mel, min=KALDI_MEL_FLOOR))

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Apply ``(x - mean) / (2 * std)`` as ASTFeatureExtractor does."""
        return (log_mel - self.mean) / (2 * self.std)

    def forward(
        self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute normalised log-mel features and their frame mask.

        Frames beyond ``num_frames`` are dropped. Missing frames, and frames
        that reach past a clip's valid samples, are set to 0 before
        normalisation (ASTFeatureExtractor's padding value).

        Shapes: (B, S), (B, S) -> features (B, T, F), frame_mask (B, T).
        """
        log_mel = self.log_mel(waveform)
        batch_size, computed_frames, _ = log_mel.shape
        if computed_frames >= self.num_frames:
            log_mel = log_mel[:, : self.num_frames]
        else:
            log_mel = nn.functional.pad(log_mel, (0, 0, 0, self.num_frames - computed_frames))

        frame_mask = self.frame_mask(attention_mask, batch_size, log_mel.device)
        computed = torch.arange(self.num_frames, device=log_mel.device) < computed_frames
        frame_mask = frame_mask * computed[None, :].to(torch.long)
        log_mel = log_mel * frame_mask[..., None].to(log_mel.dtype)
        return self.normalize(log_mel), frame_mask


class WaveformNormalizer(nn.Module):
    """Per-clip zero-mean, unit-variance normalisation of raw waveforms.

    Matches ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``: statistics
    over the valid samples only, ``eps`` added to the variance, and padded
    samples set to 0.

    Shapes: waveform (B, S), attention_mask (B, S) -> normalised (B, S), sample mask (B, S).
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if waveform.ndim != 2:
            raise ValueError(
                f"waveform must have shape (batch, samples), got {tuple(waveform.shape)}"
            )
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            waveform = waveform.float()
            if attention_mask is None:
                mask = torch.ones_like(waveform, dtype=torch.long)
            else:
                mask = attention_mask.to(device=waveform.device, dtype=torch.long)
            weights = mask.to(waveform.dtype)
            count = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
            mean = (waveform * weights).sum(dim=-1, keepdim=True) / count
            variance = ((waveform - mean).pow(2) * weights).sum(dim=-1, keepdim=True) / count
            normalized = (waveform - mean) / torch.sqrt(variance + self.eps)
            return normalized * weights, mask


def compute_normalization_stats(
    frontend: LogMelFrontend,
    waveforms: Iterable[np.ndarray | torch.Tensor],
    *,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Compute the mean and std of the raw log-mel values of the given clips.

    Every frame of every clip counts once, over the clip's full length and
    without padding frames. Pass the result to
    ``LogMelFrontend.set_normalization`` or ``AudioEncoder.set_normalization_stats``
    to replace the AudioSet statistics with ones from lung-sound data.

    Args:
        frontend: The front-end whose log-mel settings are used.
        waveforms: 1-D 16 kHz clips.
        device: Device to compute on.

    Returns:
        ``(mean, std)`` as Python floats.
    """
    total = 0.0
    total_squares = 0.0
    count = 0
    frontend = frontend.to(device)
    with torch.no_grad():
        for wave in waveforms:
            wave = torch.as_tensor(wave, dtype=torch.float32, device=device)
            if wave.ndim != 1:
                raise ValueError(f"each waveform must be 1-D, got shape {tuple(wave.shape)}")
            values = frontend.log_mel(wave[None, :]).double()
            total += values.sum().item()
            total_squares += values.pow(2).sum().item()
            count += values.numel()
    if count == 0:
        raise ValueError(
            f"no frames to compute statistics from: every clip is shorter than one frame "
            f"({frontend.frame_length} samples) or none was given"
        )
    mean = total / count
    std = math.sqrt(max(total_squares / count - mean * mean, 0.0))
    logger.info("log-mel statistics over %d values: mean %.4f, std %.4f", count, mean, std)
    return mean, std
