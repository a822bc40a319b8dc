"""Generate a labelled synthetic lung-sound set, deterministic for a seed.

The set is the built-in demo data and test data of the project. It is
written in the take-home layout (``train/`` clips plus ``train.csv`` and
``metadata.csv``) so the same reader is exercised as for real data.

Each clip is one breathing cycle: band-limited noise (roughly 100 to 1000 Hz,
where most breath-sound energy lies) shaped by an inhale/exhale envelope.
Adventitious sounds are added on top:

- crackles: short (2 to 8 ms) damped oscillations at 200 to 800 Hz, a few per
  clip, mostly during inspiration;
- wheezes: sustained tones of 100 to 1000 Hz lasting 150 to 600 ms, with the
  second and third harmonics.

Each synthetic patient has its own stethoscope colouring (a low-pass corner),
noise floor and sample rate, so grouped folds and the group inference have
something to find. This is not a model of real pathology: it only gives the
pipeline data whose labels are learnable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

logger = logging.getLogger(__name__)

# Sample rates of real stethoscope recordings (ICBHI 2017 uses 4, 10 and 44.1 kHz).
_SAMPLE_RATES_HZ = (4000, 8000, 16000, 22050, 44100)
# Label mix of the demo set, in (normal, wheeze only, crackle only, both) order.
_CLASS_PROBABILITIES = (0.45, 0.2, 0.2, 0.15)
_CLASS_LABELS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1))


@dataclass
class SyntheticConfig:
    """Size and seed of the synthetic set."""

    n_patients: int = field(default=12, metadata={"help": "Number of synthetic patients."})
    clips_per_patient: int = field(default=10, metadata={"help": "Breathing cycles per patient."})
    min_seconds: float = field(default=1.0, metadata={"help": "Shortest clip, in seconds."})
    max_seconds: float = field(default=4.0, metadata={"help": "Longest clip, in seconds."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice."})


def _band_noise(rng: np.random.Generator, n: int, rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.std(noise) + 1e-12)


def _breath_envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """Inhale (rising then falling) followed by a quieter, longer exhale."""
    split = int(n * rng.uniform(0.35, 0.45))
    t_in = np.linspace(0, np.pi, split)
    t_out = np.linspace(0, np.pi, n - split)
    return np.concatenate([np.sin(t_in) ** 2, 0.6 * np.sin(t_out) ** 2])


def _crackle(rng: np.random.Generator, rate: int) -> np.ndarray:
    duration_s = rng.uniform(0.002, 0.008)
    t = np.arange(max(int(duration_s * rate), 4)) / rate
    freq = rng.uniform(200, 800)
    return np.exp(-t / (duration_s / 4)) * np.sin(2 * np.pi * freq * t)


def _wheeze(rng: np.random.Generator, rate: int, n: int) -> tuple[np.ndarray, int]:
    duration_s = rng.uniform(0.15, 0.6)
    length = min(int(duration_s * rate), n)
    t = np.arange(length) / rate
    # Keep every harmonic below the Nyquist frequency of the clip's rate.
    f0 = rng.uniform(100, min(1000, rate / 6))
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3))
    envelope = np.sin(np.linspace(0, np.pi, length)) ** 0.5
    start = int(rng.integers(0, max(n - length, 1)))
    return tone * envelope, start


def synthesize_clip(rng: np.random.Generator, rate: int, seconds: float, wheeze: bool, crackle: bool,
                    colour_hz: float, noise_floor: float) -> np.ndarray:
    """Return one (S,) float32 breathing cycle at ``rate`` Hz with peak 0.5."""
    n = int(seconds * rate)
    high_hz = min(1000.0, colour_hz, rate / 2 - 1)
    signal = _band_noise(rng, n, rate, 100.0, high_hz) * _breath_envelope(n, rng)
    if wheeze:
        tone, start = _wheeze(rng, rate, n)
        signal[start : start + tone.size] += 1.5 * tone
    if crackle:
        for _ in range(int(rng.integers(4, 12))):
            burst = _crackle(rng, rate)
            # Crackles cluster in inspiration (the first ~40 % of the cycle).
            start = int(rng.uniform(0.05, 0.5) * n)
            end = min(start + burst.size, n)
            signal[start:end] += 4.0 * burst[: end - start]
    signal += noise_floor * rng.standard_normal(n)
    return (0.5 * signal / (np.max(np.abs(signal)) + 1e-12)).astype(np.float32)


def write_synthetic_dataset(output_dir: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write the synthetic set in the take-home layout and return its folder.

    The folder gets ``train/clip_NNNN.wav`` (16-bit PCM), ``train.csv``
    (``filename,normal,wheeze,crackle``) and ``metadata.csv``
    (``filename,patient_id,recording_id,device,official_split``).
    """
    config = config or SyntheticConfig()
    output_dir = Path(output_dir)
    audio_dir = output_dir / "train"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)

    labels_rows, metadata_rows = [], []
    index = 0
    for patient in range(config.n_patients):
        rate = int(_SAMPLE_RATES_HZ[patient % len(_SAMPLE_RATES_HZ)])
        colour_hz = float(rng.uniform(500, 2000))
        noise_floor = float(rng.uniform(0.01, 0.1))
        device = f"synthetic-{patient % 3}"
        for _ in range(config.clips_per_patient):
            index += 1
            label = _CLASS_LABELS[rng.choice(4, p=_CLASS_PROBABILITIES)]
            seconds = float(rng.uniform(config.min_seconds, config.max_seconds))
            clip = synthesize_clip(rng, rate, seconds, bool(label[1]), bool(label[2]), colour_hz, noise_floor)
            name = f"clip_{index:04d}.wav"
            sf.write(audio_dir / name, clip, rate, subtype="PCM_16")
            labels_rows.append({"filename": name, "normal": label[0], "wheeze": label[1], "crackle": label[2]})
            metadata_rows.append({
                "filename": name,
                "patient_id": f"P{patient:03d}",
                "recording_id": f"P{patient:03d}_rec",
                "device": device,
                "official_split": "test" if patient % 3 == 0 else "train",
            })
    pd.DataFrame(labels_rows).to_csv(output_dir / "train.csv", index=False)
    pd.DataFrame(metadata_rows).to_csv(output_dir / "metadata.csv", index=False)
    logger.info("wrote %d synthetic clips of %d patients to %s", index, config.n_patients, output_dir)
    return output_dir
