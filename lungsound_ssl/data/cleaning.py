"""Decide which decoded clips can be used for training, and why not.

The rules run on facts that ``lungsound_ssl.audio.decode_clip`` measures on
the source samples. A clip that fails a rule is excluded from labelled
training with that reason. Only the reasons in ``records.AUDIO_REASONS`` also
keep its audio out of self-supervised pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lungsound_ssl.audio import DecodedAudio
from lungsound_ssl.data import records as R


@dataclass
class CleaningConfig:
    """Thresholds of the cleaning rules."""

    min_duration_s: float = field(
        default=0.1,
        metadata={
            "help": "Clips shorter than this many seconds are excluded. Real breathing cycles in "
            "ICBHI 2017 start at about 0.2 s, so the default only drops fragments."
        },
    )
    max_clipped_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Clips with more than this share of samples at full scale are excluded as "
            "heavily clipped. On the ICBHI 2017 cycles 0.1 drops 23 of 1969 clips; 0.01 would drop 157."
        },
    )
    drop_duplicates: bool = field(
        default=True,
        metadata={"help": "Keep only the first of several clips with identical audio."},
    )

    def __post_init__(self):
        if self.min_duration_s < 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if not 0 < self.max_clipped_fraction <= 1:
            raise ValueError(f"max_clipped_fraction must be in (0, 1], got {self.max_clipped_fraction}")


def audio_exclusion(audio: DecodedAudio, config: CleaningConfig) -> tuple[str | None, str]:
    """Return ``(reason, detail)`` when the decoded audio is unusable, else ``(None, "")``.

    The order matters: the first failing rule is the one reported.
    """
    duration_s = audio.source_num_samples / audio.source_sample_rate_hz
    if audio.source_num_samples == 0:
        return R.ZERO_LENGTH, "the file or segment contains no samples"
    if audio.non_finite:
        return R.NON_FINITE, "the file contains NaN or infinite samples"
    if duration_s < config.min_duration_s:
        return R.TOO_SHORT, f"{duration_s:.3f} s < min_duration_s {config.min_duration_s} s"
    if audio.peak_to_peak == 0.0:
        return R.SILENT, "every sample has the same value"
    if audio.clipped_fraction > config.max_clipped_fraction:
        return R.CLIPPED, (
            f"{audio.clipped_fraction:.1%} of samples at full scale > "
            f"max_clipped_fraction {config.max_clipped_fraction:.1%}"
        )
    return None, ""
