"""Decode audio files with soundfile and resample them with soxr.

Every file is read as float32 in [-1, 1], cut to an optional segment, mixed
down to mono and resampled to the model rate. Quality facts needed by the
cleaning step (clipping, silence, non-finite samples) are measured on the
source samples, before resampling smooths them away.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# Full-scale magnitude of each PCM width after soundfile's float conversion:
# the largest positive code divided by 2 ** (bits - 1). A sample at or above
# this magnitude was at the converter's limit when recorded.
_PCM_FULL_SCALE = {
    "PCM_S8": 127 / 128,
    "PCM_U8": 127 / 128,
    "PCM_16": 32767 / 32768,
    "PCM_24": (2**23 - 1) / 2**23,
    "PCM_32": (2**31 - 1) / 2**31,
}
# Float files have no hard limit; 1.0 is the conventional full scale.
_FLOAT_FULL_SCALE = 1.0


class AudioDecodeError(ValueError):
    """A file that soundfile cannot read as audio, or a segment outside it."""


@dataclass
class DecodedAudio:
    """A decoded, mono, resampled clip and facts about its source samples.

    Attributes:
        waveform: (S,) float32 samples at ``sample_rate_hz``.
        sample_rate_hz: Rate of ``waveform``.
        source_sample_rate_hz: Rate of the file.
        source_channels: Channel count of the file (1 unless downmixed).
        source_subtype: soundfile subtype, e.g. ``PCM_16`` or ``FLOAT``.
        source_num_samples: Length of the segment in source samples.
        clipped_fraction: Share of source samples at full scale, in [0, 1].
        non_finite: True when the source contains NaN or infinite samples.
        peak_to_peak: max - min of the source samples (0 for digital silence).
        content_hash: SHA-1 of the source samples and rate, for duplicate search.
    """

    waveform: np.ndarray
    sample_rate_hz: int
    source_sample_rate_hz: int
    source_channels: int
    source_subtype: str
    source_num_samples: int
    clipped_fraction: float
    non_finite: bool
    peak_to_peak: float
    content_hash: str


def read_segment(
    path: str | Path, start_s: float | None = None, end_s: float | None = None
) -> tuple[np.ndarray, int, str]:
    """Read a file, or the ``[start_s, end_s)`` part of it, as float32.

    Returns:
        ``(samples, sample_rate_hz, subtype)`` with samples shaped (S, C).

    Raises:
        AudioDecodeError: if soundfile cannot read the file, or the segment
            starts after the end of the file.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
        rate = int(info.samplerate)
        start = 0 if start_s is None else int(round(start_s * rate))
        stop = info.frames if end_s is None else min(int(round(end_s * rate)), info.frames)
        if start > info.frames:
            raise AudioDecodeError(
                f"{path}: segment starts at {start_s} s but the file lasts "
                f"{info.frames / rate:.3f} s; check the annotation times"
            )
        samples, _ = sf.read(str(path), start=start, stop=max(stop, start), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioDecodeError(f"{path}: cannot decode as audio ({error})") from error
    return samples, rate, str(info.subtype)


def resample(waveform: np.ndarray, source_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """Resample a (S,) float32 waveform with soxr's high-quality filter."""
    if source_rate_hz == target_rate_hz or waveform.size == 0:
        return waveform.astype(np.float32, copy=False)
    return soxr.resample(waveform, source_rate_hz, target_rate_hz, quality="HQ").astype(np.float32)


def decode_clip(
    path: str | Path,
    sample_rate_hz: int,
    start_s: float | None = None,
    end_s: float | None = None,
) -> DecodedAudio:
    """Decode one clip to mono float32 at ``sample_rate_hz``.

    Multi-channel files are mixed down by averaging the channels. Non-finite
    samples are replaced by zeros in the returned waveform (the clip is still
    flagged through ``non_finite`` so the cleaning step can exclude it).
    """
    samples, rate, subtype = read_segment(path, start_s, end_s)
    channels = samples.shape[1]

    non_finite = not bool(np.isfinite(samples).all())
    if non_finite:
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)

    full_scale = _PCM_FULL_SCALE.get(subtype, _FLOAT_FULL_SCALE)
    clipped = float(np.mean(np.abs(samples) >= full_scale)) if samples.size else 0.0
    peak_to_peak = float(samples.max() - samples.min()) if samples.size else 0.0

    digest = hashlib.sha1(np.ascontiguousarray(samples).tobytes())
    digest.update(str(rate).encode())

    mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]  # (S, C) -> (S,)
    return DecodedAudio(
        waveform=resample(np.ascontiguousarray(mono, dtype=np.float32), rate, sample_rate_hz),
        sample_rate_hz=sample_rate_hz,
        source_sample_rate_hz=rate,
        source_channels=channels,
        source_subtype=subtype,
        source_num_samples=int(samples.shape[0]),
        clipped_fraction=clipped,
        non_finite=non_finite,
        peak_to_peak=peak_to_peak,
        content_hash=digest.hexdigest(),
    )
