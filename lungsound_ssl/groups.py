"""Infer which clips come from the same recording when the data carry no ids.

Clips cut from one recording share the stethoscope and its channel response,
the background noise floor and the recording level. ``recording_signature``
summarises these as band-wise level percentiles of the clip's spectrogram, and
``cluster_signatures`` groups clips with scikit-learn's agglomerative
clustering, cut at a distance threshold so the number of groups need not be
known. The group ids then feed the same grouped, stratified fold builder as
real patient or recording ids.

Clips of different source sample rates are never put in one group, because
a recording has one sample rate. Clustering within each source rate also lets
every rate use all the bands its recordings carry, up to 8 kHz for 22.05 and
44.1 kHz sources. A band common to all clips would stop at the 2 kHz of a
4 kHz source.

Shape legend: N clips, S samples, M mel bands, Q percentiles, K = Q * M
signature features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from threadpoolctl import threadpool_limits
from transformers.audio_utils import mel_filter_bank

logger = logging.getLogger(__name__)

GROUP_ID_PREFIX = "inferred_"
LINKAGES = ("average", "complete", "single")

# Power floor before taking logs, so digital silence maps to -120 dB, not -inf.
_POWER_FLOOR = 1e-12

# Default distance threshold in dB (RMS over the weighted signature features;
# see ``cluster_signatures``), chosen on the real ICBHI 2017 cycles (1969 clips,
# 188 recordings, 73 patients) by benchmarks/group_inference.py on 2 CPU cores.
# Settings: average linkage, max_group_fraction 0.2, stratified group 5-fold.
# Leakage is the share of held-out clips whose recording also has training
# clips, averaged over 20 fold seeds. AUROC is that of log-mel statistics with
# logistic regression, averaged over 3 fold seeds.
#
#   threshold dB     3      5      7      9      10     11     12     14
#   groups           949    390    137    54     46     39     33     34
#   leakage          0.93   0.80   0.74   0.58   0.54   0.56   0.52   0.56
#   fold size ratio  1.00   1.00   1.00   1.06   1.08   1.17   1.14   1.14
#   macro AUROC      0.726  0.693  0.676  0.650  0.653  0.647  0.630  0.637
#
# Random folds leak 1.00 (AUROC 0.775), patient folds 0 (AUROC 0.606). Rule:
# the lowest leakage among thresholds whose test folds differ in size by at
# most 25 % (max / min), which is 12 dB. Above about 10 dB the group-size limit
# (max_group_fraction) rather than the threshold sets how coarse the largest
# groups get, so coarser thresholds stop helping.
# NOTE: the band layout and percentile weights were also chosen on these clips
# (nearest-neighbour retrieval of same-recording clips), so the numbers above
# are likely optimistic for other stethoscopes.
DEFAULT_DISTANCE_THRESHOLD_DB = 12.0


@dataclass
class GroupInferenceConfig:
    """Options of the recording signature and of the clustering that groups clips."""

    window_ms: float = field(
        default=64.0,
        metadata={
            "help": "STFT window length in milliseconds; long windows give smooth noise-floor estimates."
        },
    )
    hop_ms: float = field(default=16.0, metadata={"help": "STFT hop length in milliseconds."})
    n_mel_bands: int = field(
        default=64, metadata={"help": "Number of mel bands (HTK mel scale) in the signature."}
    )
    min_frequency_hz: float = field(
        default=30.0, metadata={"help": "Lower edge of the lowest mel band in Hz."}
    )
    max_frequency_hz: float = field(
        default=8000.0,
        metadata={
            "help": "Upper edge of the highest mel band in Hz; capped at the Nyquist frequency of the waveform."
        },
    )
    passband_fraction: float = field(
        default=0.9,
        metadata={
            "help": "Fraction of the source Nyquist frequency that counts as carried by a clip. Bands "
            "reaching above it are left out, because resampling from the source rate leaves them "
            "empty or attenuated."
        },
    )
    percentiles: list[float] = field(
        default_factory=lambda: [10.0, 50.0, 90.0],
        metadata={
            "help": "Percentiles over STFT frames of each band's level in dB: the 10th estimates the "
            "noise floor, the 50th and 90th the level during breathing."
        },
    )
    percentile_weights: list[float] = field(
        default_factory=lambda: [2.0, 1.0, 1.0],
        metadata={
            "help": "Weight of each percentile block in the clustering distance, one per percentile. "
            "The noise floor varies least within a recording, so it counts double by default."
        },
    )
    distance_threshold_db: float = field(
        default=DEFAULT_DISTANCE_THRESHOLD_DB,
        metadata={
            "help": "Linkage distance in dB (RMS over the weighted signature features) above which "
            "clusters are not merged. Larger values give fewer, coarser groups: less leakage "
            "between folds but less balanced folds."
        },
    )
    linkage: str = field(
        default="average",
        metadata={"help": "Agglomerative linkage: average, complete or single."},
    )
    max_group_fraction: float | None = field(
        default=0.2,
        metadata={
            "help": "Largest share of all clips one inferred group may hold. The clips of a source "
            "rate with a larger group are re-clustered at thresholds lowered by a factor of 0.9 "
            "per step until every group fits. The default 0.2 is one test fold of 5, the most a group can "
            "take without unbalancing the folds. None disables the limit."
        },
    )

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.hop_ms <= 0:
            raise ValueError(
                f"window_ms ({self.window_ms}) and hop_ms ({self.hop_ms}) must be positive"
            )
        if self.n_mel_bands < 1:
            raise ValueError(f"n_mel_bands must be at least 1, got {self.n_mel_bands}")
        if not 0 <= self.min_frequency_hz < self.max_frequency_hz:
            raise ValueError(
                f"expected 0 <= min_frequency_hz < max_frequency_hz, got {self.min_frequency_hz} "
                f"and {self.max_frequency_hz}"
            )
        if not 0 < self.passband_fraction <= 1:
            raise ValueError(f"passband_fraction must be in (0, 1], got {self.passband_fraction}")
        if not self.percentiles or any(not 0 <= q <= 100 for q in self.percentiles):
            raise ValueError(
                f"percentiles must be a non-empty list of values in [0, 100], got {self.percentiles}"
            )
        if len(self.percentile_weights) != len(self.percentiles):
            raise ValueError(
                f"percentile_weights has {len(self.percentile_weights)} values but percentiles has "
                f"{len(self.percentiles)}; give one weight per percentile"
            )
        if any(w < 0 for w in self.percentile_weights) or not any(
            w > 0 for w in self.percentile_weights
        ):
            raise ValueError(
                f"percentile_weights must be non-negative with at least one positive value, got {self.percentile_weights}"
            )
        if self.distance_threshold_db <= 0:
            raise ValueError(
                f"distance_threshold_db must be positive, got {self.distance_threshold_db}"
            )
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {self.linkage!r}")
        if self.max_group_fraction is not None and not 0 < self.max_group_fraction <= 1:
            raise ValueError(
                f"max_group_fraction must be in (0, 1] or None, got {self.max_group_fraction}"
            )


def _frame_lengths(sample_rate_hz: int, config: GroupInferenceConfig) -> tuple[int, int]:
    """Convert the window and hop from milliseconds to samples."""
    window = max(2, round(config.window_ms * sample_rate_hz / 1000))
    hop = max(1, round(config.hop_ms * sample_rate_hz / 1000))
    return window, hop


def _mel_bands(sample_rate_hz: int, config: GroupInferenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Build the mel filter bank and the upper edge in Hz of each band.

    Returns:
        ``(filters, upper_edges_hz)`` with filters of shape (window // 2 + 1, M).
    """
    window, _ = _frame_lengths(sample_rate_hz, config)
    n_bins = window // 2 + 1
    max_frequency_hz = min(config.max_frequency_hz, sample_rate_hz / 2)
    if config.min_frequency_hz >= max_frequency_hz:
        raise ValueError(
            f"min_frequency_hz ({config.min_frequency_hz}) must be below the Nyquist frequency "
            f"of the {sample_rate_hz} Hz waveforms"
        )
    filters = mel_filter_bank(
        num_frequency_bins=n_bins,
        num_mel_filters=config.n_mel_bands,
        min_frequency=config.min_frequency_hz,
        max_frequency=max_frequency_hz,
        sampling_rate=sample_rate_hz,
        norm="slaney",
        mel_scale="htk",
    )
    bin_frequencies_hz = np.linspace(0, sample_rate_hz / 2, n_bins)
    upper_edges_hz = np.array(
        [
            bin_frequencies_hz[np.nonzero(filters[:, m])[0]].max(initial=0.0)
            for m in range(filters.shape[1])
        ]
    )
    return filters, upper_edges_hz


def signature_feature_names(
    sample_rate_hz: int = 16000, config: GroupInferenceConfig | None = None
) -> list[str]:
    """Name each signature feature, e.g. ``p10_band03_250Hz`` (percentile, band, upper edge)."""
    config = config or GroupInferenceConfig()
    _, upper_edges_hz = _mel_bands(sample_rate_hz, config)
    return [
        f"p{q:g}_band{m:02d}_{upper_edges_hz[m]:.0f}Hz"
        for q in config.percentiles
        for m in range(len(upper_edges_hz))
    ]


def recording_signature(
    waveform: np.ndarray,
    sample_rate_hz: int,
    source_sample_rate_hz: int,
    config: GroupInferenceConfig | None = None,
) -> np.ndarray:
    """Summarise a clip's channel response, noise floor and level as a fixed-length vector.

    The clip's power spectrogram (Hann window of ``window_ms``, hop
    ``hop_ms``, squared magnitudes divided by the window's energy) is pooled
    by ``n_mel_bands`` Slaney-normalised triangular mel filters and converted
    to dB re full scale, so a gain g shifts every value by 20 * log10(g). For
    each percentile in ``config.percentiles`` the signature contains that
    percentile over frames of every band's level.

    Pass the waveform before any per-clip loudness normalisation: the level is
    part of what identifies a recording.

    Args:
        waveform: Mono samples, shape (S,), float, at ``sample_rate_hz``.
        sample_rate_hz: Sample rate of ``waveform`` (16000 in this package).
        source_sample_rate_hz: Sample rate of the clip's file before
            resampling. Bands above ``passband_fraction`` of its Nyquist
            frequency are NaN, because resampling leaves them empty.
        config: Signature options; the defaults when None.

    Returns:
        Array of shape (K,) = (Q * M,), percentile-major: the first M values
        are the levels in dB at the first percentile, band by band from low to
        high frequency. Clips with the same source rate have NaN at the same
        positions.

    Raises:
        ValueError: if the waveform is not 1-D, is empty or has non-finite
            samples, or a sample rate is not positive.
    """
    config = config or GroupInferenceConfig()
    waveform = np.asarray(waveform)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"waveform must be a non-empty 1-D array, got shape {waveform.shape}")
    if not np.all(np.isfinite(waveform)):
        raise ValueError(
            "waveform contains NaN or infinite samples; exclude or repair the clip first"
        )
    if sample_rate_hz <= 0 or source_sample_rate_hz <= 0:
        raise ValueError(
            f"sample rates must be positive, got sample_rate_hz={sample_rate_hz} and "
            f"source_sample_rate_hz={source_sample_rate_hz}"
        )

    window, hop = _frame_lengths(sample_rate_hz, config)
    filters, upper_edges_hz = _mel_bands(sample_rate_hz, config)

    samples = torch.from_numpy(waveform.astype(np.float64))
    if samples.numel() < window:
        # NOTE: a clip shorter than one window gives a single zero-padded frame,
        # so all its percentiles are equal and its noise floor is overestimated.
        samples = torch.nn.functional.pad(samples, (0, window - samples.numel()))
    hann = torch.hann_window(window, dtype=torch.float64)
    spectrum = torch.stft(
        samples, n_fft=window, hop_length=hop, window=hann, center=False, return_complex=True
    )
    power = np.abs(spectrum.numpy()) ** 2 / float(hann.square().sum())  # (F, T)
    band_power = filters.T @ power  # (M, F) @ (F, T) -> (M, T)
    band_db = 10.0 * np.log10(band_power + _POWER_FLOOR)

    levels_db = np.percentile(band_db, config.percentiles, axis=1)  # (Q, M)
    carried = upper_edges_hz <= config.passband_fraction * source_sample_rate_hz / 2
    levels_db[:, ~carried] = np.nan
    return levels_db.reshape(-1)  # (Q, M) -> (Q * M,)


def signature_matrix(
    waveforms: Sequence[np.ndarray],
    sample_rate_hz: int,
    source_sample_rates: Sequence[int],
    config: GroupInferenceConfig | None = None,
) -> np.ndarray:
    """Stack ``recording_signature`` of every clip into an array of shape (N, K)."""
    config = config or GroupInferenceConfig()
    if len(waveforms) != len(source_sample_rates):
        raise ValueError(
            f"got {len(waveforms)} waveforms but {len(source_sample_rates)} source sample rates; "
            "give one source rate per clip"
        )
    n_features = len(config.percentiles) * config.n_mel_bands
    rows = []
    # One clip's arrays are small, so handing them to several threads costs
    # more than it saves: on 2 CPU cores one thread was 3 to 10 times faster.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            for index, (waveform, source_rate) in enumerate(zip(waveforms, source_sample_rates)):
                try:
                    rows.append(recording_signature(waveform, sample_rate_hz, int(source_rate), config))
                except ValueError as error:
                    raise ValueError(f"clip {index}: {error}") from error
    finally:
        torch.set_num_threads(torch_threads)
    if not rows:
        return np.empty((0, n_features))
    return np.stack(rows)


def _weighted_features(signatures: np.ndarray, config: GroupInferenceConfig) -> np.ndarray:
    """Weight each percentile block and keep the columns every clip carries.

    The result is scaled by 1 / sqrt(number of kept columns), so Euclidean
    distances between rows are RMS differences in dB and one threshold fits
    source rates with few and with many carried bands.
    """
    n_bands = signatures.shape[1] // len(config.percentiles)
    weights = np.repeat(np.asarray(config.percentile_weights, dtype=np.float64), n_bands)
    keep = ~np.isnan(signatures).any(axis=0) & (weights > 0)
    if not keep.any():
        raise ValueError(
            "no signature band is carried by every clip of this source rate; lower min_frequency_hz "
            "or check the source sample rates"
        )
    features = signatures[:, keep] * weights[keep]
    return features / math.sqrt(int(keep.sum()))


# Re-clustering of an oversized group lowers the threshold by this factor per
# step, for at most this many steps (down to 0.9 ** 30, about 4 % of it).
_THRESHOLD_STEP_FACTOR = 0.9
_MAX_THRESHOLD_STEPS = 30


def _cluster_one_rate(
    features: np.ndarray, rate: int, n_clips_total: int, config: GroupInferenceConfig
) -> np.ndarray:
    """Cluster the weighted signatures of one source rate, shape (N_rate, K'), into labels (N_rate,).

    When ``max_group_fraction`` is set and a group exceeds it, the clips are
    clustered again at a lower threshold. A group too large for one test fold
    would unbalance the folds anyway, so splitting it along its most
    dissimilar sub-clusters trades a little leakage for balance.
    """
    max_group_size = math.inf
    if config.max_group_fraction is not None:
        max_group_size = config.max_group_fraction * n_clips_total

    threshold_db = config.distance_threshold_db
    for step in range(_MAX_THRESHOLD_STEPS + 1):
        # NOTE: scikit-learn passes average, complete and single linkage to
        # scipy, which stores all N (N - 1) / 2 pairwise distances of one source
        # rate: about 1.6 GB of float64 at 20 000 clips.
        clustering = AgglomerativeClustering(
            n_clusters=None,
            distance_threshold=threshold_db,
            linkage=config.linkage,
            metric="euclidean",
        )
        labels = clustering.fit_predict(features)
        largest = int(np.bincount(labels).max())
        if largest <= max_group_size or step == _MAX_THRESHOLD_STEPS:
            break
        threshold_db *= _THRESHOLD_STEP_FACTOR

    if largest > max_group_size:
        logger.warning(
            "source rate %d Hz: a group of %d clips remains larger than max_group_fraction allows "
            "(%.0f clips) even at threshold %.2f dB; its clips may be near duplicates",
            rate,
            largest,
            max_group_size,
            threshold_db,
        )
    elif threshold_db < config.distance_threshold_db:
        logger.info(
            "source rate %d Hz: lowered the distance threshold from %.2f to %.2f dB so that no group "
            "holds more than %.0f clips",
            rate,
            config.distance_threshold_db,
            threshold_db,
            max_group_size,
        )
    return labels


def cluster_signatures(
    signatures: np.ndarray,
    source_sample_rates: Sequence[int],
    config: GroupInferenceConfig | None = None,
) -> np.ndarray:
    """Group clips by their signatures, separately within each source sample rate.

    Within one source rate, agglomerative clustering (scikit-learn) merges
    clusters while their linkage distance is below ``distance_threshold_db``.
    The distance is the Euclidean distance between weighted signatures divided
    by sqrt(number of features), i.e. an RMS difference in dB.

    Args:
        signatures: Array of shape (N, K) from ``signature_matrix`` with the
            same config.
        source_sample_rates: Source sample rate of each clip, length N.
        config: Clustering options; the defaults when None.

    Returns:
        Array of N strings ``inferred_0001``, ``inferred_0002``, ... numbered
        in order of first appearance, so the ids are deterministic for a given
        input order.

    Raises:
        ValueError: if the shapes do not match the config or the source rates,
            or clips of one source rate have NaN in different columns.
    """
    config = config or GroupInferenceConfig()
    signatures = np.asarray(signatures, dtype=np.float64)
    rates = np.asarray(source_sample_rates)
    if signatures.ndim != 2 or signatures.shape[0] != len(rates):
        raise ValueError(
            f"signatures must have shape (N, K) with N = {len(rates)} source sample rates, got {signatures.shape}"
        )
    if signatures.shape[1] % len(config.percentiles) != 0:
        raise ValueError(
            f"signatures have {signatures.shape[1]} columns, not a multiple of the "
            f"{len(config.percentiles)} percentiles in the config; compute them with the same config"
        )

    # Cluster labels as (source rate, label within that rate), made global below.
    local_labels: list[tuple[int, int] | None] = [None] * len(rates)
    for rate in np.unique(rates):
        members = np.flatnonzero(rates == rate)
        block = signatures[members]
        if not np.array_equal(np.isnan(block), np.broadcast_to(np.isnan(block[0]), block.shape)):
            raise ValueError(
                f"clips with source rate {rate} Hz have NaN in different signature columns; "
                "compute all signatures with one waveform sample rate and one config"
            )
        if len(members) == 1:
            labels = np.zeros(1, dtype=int)
        else:
            labels = _cluster_one_rate(
                _weighted_features(block, config), int(rate), len(rates), config
            )
        for member, label in zip(members, labels):
            local_labels[member] = (int(rate), int(label))

    group_numbers: dict[tuple[int, int], int] = {}
    for key in local_labels:
        group_numbers.setdefault(key, len(group_numbers) + 1)
    width = max(4, len(str(len(group_numbers))))
    return np.array(
        [f"{GROUP_ID_PREFIX}{group_numbers[key]:0{width}d}" for key in local_labels], dtype=object
    )


def infer_groups(
    waveforms: Sequence[np.ndarray],
    sample_rate_hz: int,
    source_sample_rates: Sequence[int],
    config: GroupInferenceConfig | None = None,
) -> np.ndarray:
    """Infer a recording group id for every clip from its audio alone.

    Args:
        waveforms: One mono waveform per clip, each of shape (S,), all at
            ``sample_rate_hz`` and not loudness-normalised per clip.
        sample_rate_hz: Sample rate of the waveforms.
        source_sample_rates: Sample rate of each clip's file before
            resampling; clips with different source rates never share a group.
        config: Signature and clustering options; the defaults when None.

    Returns:
        Array of N group id strings such as ``inferred_0001`` (see
        ``cluster_signatures``).
    """
    config = config or GroupInferenceConfig()
    if len(waveforms) == 0:
        return np.array([], dtype=object)
    signatures = signature_matrix(waveforms, sample_rate_hz, source_sample_rates, config)
    groups = cluster_signatures(signatures, source_sample_rates, config)

    _, sizes = np.unique(groups, return_counts=True)
    n_rates = len({int(rate) for rate in source_sample_rates})
    logger.info(
        "inferred %d recording groups from %d clips in %d source sample rates "
        "(threshold %.2f dB, %s linkage; largest group %d clips, median %d, %d single-clip groups)",
        len(sizes),
        len(groups),
        n_rates,
        config.distance_threshold_db,
        config.linkage,
        sizes.max(),
        int(np.median(sizes)),
        int((sizes == 1).sum()),
    )
    return groups
