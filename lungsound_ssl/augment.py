"""Random augmentations for the two views of a contrastive pair.

Waveform augmentations act on a batch of equal-length clips; SpecAugment acts
on the front-end output (for example log-mel features) of such a batch.

Shape legend:
    B   clips in the batch
    S   samples per clip
    T   frames
    F   feature bins (mel bins)

Randomness:
    Every module takes an optional ``torch.Generator``. With one, the output
    depends only on the input and the generator's state, whatever device the
    input is on, because the random numbers are drawn on the generator's
    device and then moved. Without one, torch's global generator is used.
    That is the safe choice inside DataLoader workers, which PyTorch seeds
    differently per worker, whereas a generator stored in a module would be
    copied into every worker with the same state. A module draws the same
    amount of random numbers whatever the data, so a given seed reproduces a
    whole pipeline.

Each augmentation is applied to each clip independently with its own
probability. A module with probability 0, or one switched off in
``AugmentConfig``, returns its input unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "NOISE_COLORS",
    "AddNoise",
    "AugmentConfig",
    "MixWithOther",
    "RandomGain",
    "SpecAugment",
    "TimeShift",
    "WaveformAugmenter",
]

NOISE_COLORS: tuple[str, ...] = ("white", "pink", "random")
MASK_FILLS: tuple[str, ...] = ("mean", "zero")


# ---------------------------------------------------------------------------
# Validation and random draws shared by the modules
# ---------------------------------------------------------------------------


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_range(min_name: str, min_value: float, max_name: str, max_value: float) -> None:
    if min_value > max_value:
        raise ValueError(f"{min_name} ({min_value}) must not exceed {max_name} ({max_value})")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_waveforms(waveforms: torch.Tensor) -> None:
    if waveforms.dim() != 2:
        raise ValueError(
            f"expected waveforms of shape (B, S), got {tuple(waveforms.shape)}; "
            "add a batch dimension with unsqueeze(0) for a single clip"
        )
    if not waveforms.is_floating_point():
        raise ValueError(f"expected floating-point waveforms, got dtype {waveforms.dtype}")


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    values = torch.rand(shape, generator=generator, device=_generator_device(generator))
    return (low + (high - low) * values).to(device)


def _apply_mask(
    batch_size: int, probability: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Return a (B,) bool tensor, True for the clips to augment."""
    return _uniform((batch_size,), 0.0, 1.0, generator, device) < probability


# ---------------------------------------------------------------------------
# Waveform augmentations on (B, S)
# ---------------------------------------------------------------------------


class RandomGain(nn.Module):
    """Multiply each clip by a gain drawn uniformly in decibels.

    Shape:
        waveforms: (B, S) -> (B, S)
    """

    def __init__(
        self, min_gain_db: float = -6.0, max_gain_db: float = 6.0, probability: float = 0.8
    ) -> None:
        super().__init__()
        _check_range("min_gain_db", min_gain_db, "max_gain_db", max_gain_db)
        _check_probability("probability", probability)
        self.min_gain_db = min_gain_db
        self.max_gain_db = max_gain_db
        self.probability = probability

    def forward(
        self, waveforms: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_waveforms(waveforms)
        batch_size, device = waveforms.shape[0], waveforms.device
        apply = _apply_mask(batch_size, self.probability, generator, device)
        gain_db = _uniform((batch_size,), self.min_gain_db, self.max_gain_db, generator, device)

        gain = torch.where(apply, 10.0 ** (gain_db / 20.0), torch.ones_like(gain_db))
        return waveforms * gain.to(waveforms.dtype)[:, None]

    def extra_repr(self) -> str:
        return f"gain_db=[{self.min_gain_db}, {self.max_gain_db}], probability={self.probability}"


def _pink_from_white(white: torch.Tensor) -> torch.Tensor:
    """Shape white noise to a 1/f power spectrum (pink noise).

    Scaling the amplitude of frequency bin k by 1/sqrt(k) gives power
    proportional to 1/k. The DC bin is zeroed, so the noise has zero mean.
    Written here because torch has no coloured-noise generator and torchaudio
    is not a dependency.

    Shape:
        white: (B, S) -> (B, S)
    """
    num_samples = white.shape[-1]
    spectrum = torch.fft.rfft(white, dim=-1)  # (B, S) -> (B, S // 2 + 1)
    bins = torch.arange(spectrum.shape[-1], device=white.device, dtype=white.dtype)
    scale = torch.where(bins > 0, bins.clamp_min(1.0).rsqrt(), torch.zeros_like(bins))
    return torch.fft.irfft(spectrum * scale, n=num_samples, dim=-1)  # -> (B, S)


class AddNoise(nn.Module):
    """Add white or pink noise at a signal-to-noise ratio drawn uniformly in decibels.

    The SNR is measured against each clip's own mean power:
    ``10 log10(mean(x^2) / mean(noise^2))`` equals the drawn value to float
    precision, because the noise is rescaled to exactly the required power.
    A silent clip has zero power and therefore gets no noise.

    Args:
        min_snr_db, max_snr_db: Range of the SNR in dB.
        color: ``"white"``, ``"pink"`` (power proportional to 1/f) or
            ``"random"`` (each clip picks one with equal chance).
        probability: Chance that a clip gets noise.

    Shape:
        waveforms: (B, S) -> (B, S)
    """

    def __init__(
        self,
        min_snr_db: float = 15.0,
        max_snr_db: float = 40.0,
        color: str = "random",
        probability: float = 0.5,
    ) -> None:
        super().__init__()
        _check_range("min_snr_db", min_snr_db, "max_snr_db", max_snr_db)
        _check_choice("noise color", color, NOISE_COLORS)
        _check_probability("probability", probability)
        self.min_snr_db = min_snr_db
        self.max_snr_db = max_snr_db
        self.color = color
        self.probability = probability

    def forward(
        self, waveforms: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_waveforms(waveforms)
        batch_size, device = waveforms.shape[0], waveforms.device
        apply = _apply_mask(batch_size, self.probability, generator, device)
        snr_db = _uniform((batch_size,), self.min_snr_db, self.max_snr_db, generator, device)
        use_pink = _uniform((batch_size,), 0.0, 1.0, generator, device) < 0.5
        white = torch.randn(
            waveforms.shape, generator=generator, device=_generator_device(generator)
        )
        white = white.to(device)

        # Noise is built in float32 because torch.fft does not support float16 on CPU.
        if self.color == "white":
            noise = white
        elif self.color == "pink":
            noise = _pink_from_white(white)
        else:
            noise = torch.where(use_pink[:, None], _pink_from_white(white), white)
        noise_power = (
            noise.pow(2).mean(dim=1, keepdim=True).clamp_min(torch.finfo(noise.dtype).tiny)
        )
        noise = noise / noise_power.sqrt()  # unit power per clip

        signal_power = waveforms.float().pow(2).mean(dim=1)
        target_noise_power = signal_power / 10.0 ** (snr_db / 10.0)
        noise_scale = torch.where(
            apply, target_noise_power.sqrt(), torch.zeros_like(target_noise_power)
        )
        return waveforms + (noise * noise_scale[:, None]).to(waveforms.dtype)

    def extra_repr(self) -> str:
        return (
            f"snr_db=[{self.min_snr_db}, {self.max_snr_db}], color={self.color!r}, "
            f"probability={self.probability}"
        )


class TimeShift(nn.Module):
    """Roll each clip circularly by a whole number of samples.

    The shift is drawn uniformly from ``[-max_fraction * S, max_fraction * S]``
    (rounded down to whole samples), so both directions are equally likely.
    A circular roll keeps every sample but can put a click where the end of
    the clip meets its start.

    Shape:
        waveforms: (B, S) -> (B, S)
    """

    def __init__(self, max_fraction: float = 0.25, probability: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        _check_probability("probability", probability)
        self.max_fraction = max_fraction
        self.probability = probability

    def forward(
        self, waveforms: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_waveforms(waveforms)
        batch_size, num_samples = waveforms.shape
        device = waveforms.device
        apply = _apply_mask(batch_size, self.probability, generator, device)
        max_shift = int(self.max_fraction * num_samples)
        shift = torch.randint(
            -max_shift,
            max_shift + 1,
            (batch_size,),
            generator=generator,
            device=_generator_device(generator),
        ).to(device)
        shift = torch.where(apply, shift, torch.zeros_like(shift))

        # Output sample s of clip b is input sample (s - shift_b) mod S, as in torch.roll.
        source = (
            torch.arange(num_samples, device=device)[None, :] - shift[:, None]
        ) % num_samples  # (B, S)
        return waveforms.gather(1, source)

    def extra_repr(self) -> str:
        return f"max_fraction={self.max_fraction}, probability={self.probability}"


class MixWithOther(nn.Module):
    """Mix each clip with another clip of the batch at a low ratio.

    Partners come from a random cyclic permutation, so no clip is mixed with
    itself when B >= 2. The partner is first scaled to the clip's RMS level,
    so the ratio sets the energy share of the partner whatever its loudness:
    ``out = (1 - r) * x + r * partner * rms(x) / rms(partner)``. A batch of
    one clip is returned unchanged. A silent partner adds nothing, so the clip
    is only scaled by (1 - r).

    Args:
        min_ratio, max_ratio: Range of the mixing ratio r, drawn uniformly.
        probability: Chance that a clip is mixed.

    Shape:
        waveforms: (B, S) -> (B, S)
    """

    def __init__(
        self, min_ratio: float = 0.0, max_ratio: float = 0.2, probability: float = 0.5
    ) -> None:
        super().__init__()
        _check_range("min_ratio", min_ratio, "max_ratio", max_ratio)
        if min_ratio < 0.0 or max_ratio > 1.0:
            raise ValueError(f"mixing ratios must lie in [0, 1], got [{min_ratio}, {max_ratio}]")
        _check_probability("probability", probability)
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.probability = probability

    def forward(
        self, waveforms: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_waveforms(waveforms)
        batch_size, device = waveforms.shape[0], waveforms.device
        apply = _apply_mask(batch_size, self.probability, generator, device)
        ratio = _uniform((batch_size,), self.min_ratio, self.max_ratio, generator, device)
        order = torch.randperm(
            batch_size, generator=generator, device=_generator_device(generator)
        ).to(device)
        if batch_size < 2:
            return waveforms

        # partner[order[k]] = order[k + 1]: one cycle through the batch, no fixed point.
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)

        signal = waveforms.float()
        rms = signal.pow(2).mean(dim=1).sqrt()
        partner_rms = rms[partner]
        level = torch.where(
            partner_rms > 0, rms / partner_rms.clamp_min(torch.finfo(rms.dtype).tiny), 0.0
        )
        ratio = torch.where(apply, ratio, torch.zeros_like(ratio))[:, None]
        mixed = (1 - ratio) * signal + ratio * level[:, None] * signal[partner]
        return mixed.to(waveforms.dtype)

    def extra_repr(self) -> str:
        return f"ratio=[{self.min_ratio}, {self.max_ratio}], probability={self.probability}"


# ---------------------------------------------------------------------------
# Feature augmentation on (B, T, F)
# ---------------------------------------------------------------------------


def _band_mask(
    batch_size: int,
    count: int,
    max_width: int,
    length: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Return a (B, length) bool mask that is True inside ``count`` random bands per clip."""
    gen_device = _generator_device(generator)
    widths = torch.randint(
        0, max_width + 1, (batch_size, count), generator=generator, device=gen_device
    )
    widths = widths.clamp_max(length).to(device)
    start_fraction = _uniform((batch_size, count), 0.0, 1.0, generator, device)
    starts = (start_fraction * (length - widths + 1)).floor().long()  # start in [0, length - width]

    positions = torch.arange(length, device=device)[None, None, :]  # (1, 1, L)
    inside = (positions >= starts[..., None]) & (
        positions < (starts + widths)[..., None]
    )  # (B, count, L)
    return inside.any(dim=1)  # (B, count, L) -> (B, L)


class SpecAugment(nn.Module):
    """Mask random bands of frames and of feature bins, as in SpecAugment.

    Each augmented clip gets ``time_mask_count`` bands of 0 to
    ``time_mask_max_frames`` frames and ``freq_mask_count`` bands of 0 to
    ``freq_mask_max_bins`` bins; bands may overlap. Masked cells are set to
    the clip's mean feature value (``fill="mean"``, which suits both raw
    log-mel and normalised features) or to 0 (``fill="zero"``, the mean of
    features normalised to zero mean). Time warping from the SpecAugment
    paper (Park et al. 2019) is not implemented.

    Shape:
        features: (B, T, F) -> (B, T, F)
    """

    def __init__(
        self,
        time_mask_count: int = 2,
        time_mask_max_frames: int = 20,
        freq_mask_count: int = 2,
        freq_mask_max_bins: int = 12,
        probability: float = 0.8,
        fill: str = "mean",
    ) -> None:
        super().__init__()
        for name, value in (
            ("time_mask_count", time_mask_count),
            ("time_mask_max_frames", time_mask_max_frames),
            ("freq_mask_count", freq_mask_count),
            ("freq_mask_max_bins", freq_mask_max_bins),
        ):
            _check_non_negative(name, value)
        _check_probability("probability", probability)
        _check_choice("mask fill", fill, MASK_FILLS)
        self.time_mask_count = int(time_mask_count)
        self.time_mask_max_frames = int(time_mask_max_frames)
        self.freq_mask_count = int(freq_mask_count)
        self.freq_mask_max_bins = int(freq_mask_max_bins)
        self.probability = probability
        self.fill = fill

    @classmethod
    def from_config(cls, config: AugmentConfig) -> SpecAugment:
        """Build the module from ``config``, with probability 0 when SpecAugment is switched off there."""
        enabled = config.augment_enabled and config.spec_augment_enabled
        return cls(
            time_mask_count=config.time_mask_count,
            time_mask_max_frames=config.time_mask_max_frames,
            freq_mask_count=config.freq_mask_count,
            freq_mask_max_bins=config.freq_mask_max_bins,
            probability=config.spec_augment_probability if enabled else 0.0,
            fill=config.spec_augment_fill,
        )

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"expected features of shape (B, T, F), got {tuple(features.shape)}")
        if self.probability == 0.0:
            return features
        batch_size, num_frames, num_bins = features.shape
        device = features.device
        apply = _apply_mask(batch_size, self.probability, generator, device)
        time_mask = _band_mask(
            batch_size,
            self.time_mask_count,
            self.time_mask_max_frames,
            num_frames,
            generator,
            device,
        )
        freq_mask = _band_mask(
            batch_size, self.freq_mask_count, self.freq_mask_max_bins, num_bins, generator, device
        )

        # (B, T) and (B, F) -> (B, T, F)
        mask = (time_mask[:, :, None] | freq_mask[:, None, :]) & apply[:, None, None]
        if self.fill == "mean":
            fill_value = features.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        else:
            fill_value = torch.zeros((), dtype=features.dtype, device=device)
        return torch.where(mask, fill_value, features)

    def extra_repr(self) -> str:
        return (
            f"time_masks={self.time_mask_count}x<={self.time_mask_max_frames} frames, "
            f"freq_masks={self.freq_mask_count}x<={self.freq_mask_max_bins} bins, "
            f"probability={self.probability}, fill={self.fill!r}"
        )


# ---------------------------------------------------------------------------
# Configuration and composition
# ---------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Augmentations applied independently to each view of a contrastive pair.

    The default ranges are starting points, not tuned values. Noise and masks
    stay mild because wheezes and crackles are quiet and short, and heavy
    noise or wide masks could hide the sounds the encoder should learn.
    """

    augment_enabled: bool = field(
        default=True, metadata={"help": "Master switch: False turns every augmentation below off."}
    )

    gain_enabled: bool = field(default=True, metadata={"help": "Apply a random gain to each clip."})
    gain_probability: float = field(
        default=0.8, metadata={"help": "Chance that a clip gets a random gain."}
    )
    gain_min_db: float = field(default=-6.0, metadata={"help": "Lowest gain in dB."})
    gain_max_db: float = field(default=6.0, metadata={"help": "Highest gain in dB."})

    noise_enabled: bool = field(default=True, metadata={"help": "Add noise at a random SNR."})
    noise_probability: float = field(
        default=0.5, metadata={"help": "Chance that a clip gets noise."}
    )
    noise_min_snr_db: float = field(
        default=15.0,
        metadata={"help": "Lowest signal-to-noise ratio in dB, against the clip's own power."},
    )
    noise_max_snr_db: float = field(
        default=40.0, metadata={"help": "Highest signal-to-noise ratio in dB."}
    )
    noise_color: str = field(
        default="random",
        metadata={
            "help": "Noise spectrum: white, pink, or random (each clip picks one).",
            "choices": NOISE_COLORS,
        },
    )

    shift_enabled: bool = field(
        default=True, metadata={"help": "Roll each clip circularly in time."}
    )
    shift_probability: float = field(
        default=0.5, metadata={"help": "Chance that a clip is shifted."}
    )
    shift_max_fraction: float = field(
        default=0.25,
        metadata={"help": "Largest shift, as a fraction of the clip length, in either direction."},
    )

    mix_enabled: bool = field(
        default=True, metadata={"help": "Mix each clip with another clip of the batch."}
    )
    mix_probability: float = field(default=0.5, metadata={"help": "Chance that a clip is mixed."})
    mix_min_ratio: float = field(
        default=0.0, metadata={"help": "Lowest energy share of the other clip."}
    )
    mix_max_ratio: float = field(
        default=0.2, metadata={"help": "Highest energy share of the other clip."}
    )

    spec_augment_enabled: bool = field(
        default=True,
        metadata={"help": "Mask random time and frequency bands of the front-end output."},
    )
    spec_augment_probability: float = field(
        default=0.8, metadata={"help": "Chance that a clip is masked."}
    )
    time_mask_count: int = field(default=2, metadata={"help": "Number of time masks per clip."})
    time_mask_max_frames: int = field(default=20, metadata={"help": "Widest time mask, in frames."})
    freq_mask_count: int = field(
        default=2, metadata={"help": "Number of frequency masks per clip."}
    )
    freq_mask_max_bins: int = field(
        default=12, metadata={"help": "Widest frequency mask, in feature bins."}
    )
    spec_augment_fill: str = field(
        default="mean",
        metadata={
            "help": "Value of masked cells: the clip's mean feature value, or zero.",
            "choices": MASK_FILLS,
        },
    )

    def __post_init__(self) -> None:
        # Checked here as well as in the modules so that a bad YAML value fails
        # when the config is loaded, naming the config field.
        for name in (
            "gain_probability",
            "noise_probability",
            "shift_probability",
            "mix_probability",
            "spec_augment_probability",
        ):
            _check_probability(name, getattr(self, name))
        _check_range("gain_min_db", self.gain_min_db, "gain_max_db", self.gain_max_db)
        _check_range(
            "noise_min_snr_db", self.noise_min_snr_db, "noise_max_snr_db", self.noise_max_snr_db
        )
        _check_range("mix_min_ratio", self.mix_min_ratio, "mix_max_ratio", self.mix_max_ratio)
        if self.mix_min_ratio < 0.0 or self.mix_max_ratio > 1.0:
            raise ValueError(
                f"mix_min_ratio and mix_max_ratio must lie in [0, 1], got [{self.mix_min_ratio}, {self.mix_max_ratio}]"
            )
        if not 0.0 <= self.shift_max_fraction <= 1.0:
            raise ValueError(f"shift_max_fraction must be in [0, 1], got {self.shift_max_fraction}")
        for name in (
            "time_mask_count",
            "time_mask_max_frames",
            "freq_mask_count",
            "freq_mask_max_bins",
        ):
            _check_non_negative(name, getattr(self, name))
        _check_choice("noise_color", self.noise_color, NOISE_COLORS)
        _check_choice("spec_augment_fill", self.spec_augment_fill, MASK_FILLS)


class WaveformAugmenter(nn.Module):
    """Apply the enabled waveform augmentations of an ``AugmentConfig`` in a fixed order.

    The order is mix, shift, gain, noise. Mixing comes first so that the
    partner is an unaugmented clip. Noise comes last so that its SNR is
    measured against the clip as the encoder will hear it.

    Shape:
        waveforms: (B, S) -> (B, S)
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        config = AugmentConfig() if config is None else config
        self.config = config
        steps: list[nn.Module] = []
        if config.augment_enabled:
            if config.mix_enabled:
                steps.append(
                    MixWithOther(config.mix_min_ratio, config.mix_max_ratio, config.mix_probability)
                )
            if config.shift_enabled:
                steps.append(TimeShift(config.shift_max_fraction, config.shift_probability))
            if config.gain_enabled:
                steps.append(
                    RandomGain(config.gain_min_db, config.gain_max_db, config.gain_probability)
                )
            if config.noise_enabled:
                steps.append(
                    AddNoise(
                        config.noise_min_snr_db,
                        config.noise_max_snr_db,
                        config.noise_color,
                        config.noise_probability,
                    )
                )
        self.steps = nn.ModuleList(steps)

    def forward(
        self, waveforms: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_waveforms(waveforms)
        for step in self.steps:
            waveforms = step(waveforms, generator=generator)
        return waveforms
