"""Build the clip table: decode, clean and cache every clip a reader listed.

The clip table is what the rest of the package consumes, whatever the source
layout. It wraps a memory-mapped ``datasets.Dataset`` with one row per listed
clip, usable or not, so the cleaning report and the training code read the
same rows. Columns:

- ``filename``: the clip id (``clip_0001.wav``, or ``<recording>.wav#3`` for
  a clip cut from a recording); ``folds.csv`` and ``predictions.csv`` use it.
- ``audio``: mono float32 samples at ``sample_rate_hz`` (empty when the audio
  could not be used at all).
- ``normal``, ``wheeze``, ``crackle``: 0/1, or -1 when the clip has no label.
- ``label_class``: ``normal``, ``wheeze``, ``crackle``, ``both`` or ``""``.
- ``exclusion``: why the clip is left out of labelled training, or ``""``.
- ``pretrain_ok``: whether its audio may be used for self-supervised pretraining.
- source facts: ``duration_s``, ``source_sample_rate_hz``, ``source_channels``,
  ``source_subtype``, ``clipped_fraction``, ``path``, ``start_s``, ``end_s``.
- one string column per metadata attribute (``patient_id``, ``device``, ...),
  ``""`` where a clip has no value.

Decoded audio is cached under ``cache_dir/<fingerprint>`` as Arrow files. The
fingerprint covers the clip list, each file's size and modification time, the
labels and the decoding and cleaning settings, so a second run with the same
inputs loads the cache instead of decoding again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from lungsound_ssl import __version__
from lungsound_ssl.audio import AudioDecodeError, decode_clip
from lungsound_ssl.data import records as R
from lungsound_ssl.data.cleaning import CleaningConfig, audio_exclusion
from lungsound_ssl.data.records import ClipRecord
from lungsound_ssl.labels import LABELS, class_4

logger = logging.getLogger(__name__)

# Bump when the table's columns or the decoding change, so old caches are not reused.
CACHE_FORMAT_VERSION = "1"

_FIXED_COLUMNS = {
    "filename": datasets.Value("string"),
    "audio": datasets.List(datasets.Value("float32")),
    "num_samples": datasets.Value("int64"),
    "duration_s": datasets.Value("float32"),
    "source_sample_rate_hz": datasets.Value("int32"),
    "source_channels": datasets.Value("int32"),
    "source_subtype": datasets.Value("string"),
    "clipped_fraction": datasets.Value("float32"),
    "content_hash": datasets.Value("string"),
    "normal": datasets.Value("int8"),
    "wheeze": datasets.Value("int8"),
    "crackle": datasets.Value("int8"),
    "label_class": datasets.Value("string"),
    "exclusion": datasets.Value("string"),
    "exclusion_detail": datasets.Value("string"),
    "pretrain_ok": datasets.Value("bool"),
    "path": datasets.Value("string"),
    "start_s": datasets.Value("float32"),
    "end_s": datasets.Value("float32"),
}


def default_cache_dir() -> Path:
    """Return ``$LUNGSOUND_CACHE_DIR`` or ``~/.cache/lungsound_ssl/clips``."""
    env = os.environ.get("LUNGSOUND_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lungsound_ssl" / "clips"


@dataclass
class ClipTable:
    """Decoded clips of one data folder with labels, attributes and exclusions.

    Attributes:
        dataset: One row per listed clip (columns in the module docstring).
        sample_rate_hz: Rate of every ``audio`` column entry.
        data_dir: Folder the clips were read from.
        data_format: Reader that listed them (``takehome``, ``icbhi``, ``sprsound``).
        fingerprint: Hash of the inputs and settings the table was built from.
    """

    dataset: datasets.Dataset
    sample_rate_hz: int
    data_dir: Path
    data_format: str
    fingerprint: str
    _audio_view: datasets.Dataset | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def filenames(self) -> list[str]:
        return list(self.dataset["filename"])

    def column(self, name: str) -> list:
        """Return one column as a list; ``""`` for every row when it is absent."""
        if name not in self.dataset.column_names:
            return [""] * len(self.dataset)
        return list(self.dataset[name])

    def trainable_indices(self) -> np.ndarray:
        """Indices of clips usable for labelled training."""
        return np.flatnonzero(np.asarray(self.dataset["exclusion"]) == "")

    def pretrain_indices(self) -> np.ndarray:
        """Indices of clips whose audio may be used for self-supervised pretraining."""
        return np.flatnonzero(np.asarray(self.dataset["pretrain_ok"], dtype=bool))

    def labels(self, indices=None) -> np.ndarray:
        """Labels as an (N, 3) int array in ``LABELS`` order (-1 where unknown)."""
        rows = self.dataset if indices is None else self.dataset.select(indices)
        return np.stack([np.asarray(rows[name], dtype=np.int64) for name in LABELS], axis=1)

    def audio(self, index: int) -> np.ndarray:
        """Return the (S,) float32 waveform of one clip at ``sample_rate_hz``."""
        # The NumPy-formatted view reads the Arrow buffer directly; the default
        # format builds a Python list of floats first, about 16 times slower.
        if self._audio_view is None:
            self._audio_view = self.dataset.with_format("numpy", columns=["audio"])
        return np.asarray(self._audio_view[int(index)]["audio"], dtype=np.float32)

    def has_attribute(self, name: str) -> bool:
        """True when the column exists and at least one usable clip has a value."""
        if name not in self.dataset.column_names:
            return False
        values = np.asarray(self.dataset[name], dtype=object)[self.trainable_indices()]
        return any(str(v).strip() for v in values)


def fingerprint_records(
    records: list[ClipRecord], sample_rate_hz: int, cleaning: CleaningConfig, data_format: str
) -> str:
    """Hash the clip list, file sizes and mtimes, labels and settings."""
    digest = hashlib.sha256()
    header = {
        "version": CACHE_FORMAT_VERSION,
        "package": __version__,
        "sample_rate_hz": sample_rate_hz,
        "cleaning": dataclasses.asdict(cleaning),
        "data_format": data_format,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for record in records:
        try:
            stat = record.path.stat()
            file_state = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            file_state = None
        item = [
            record.clip_id,
            str(record.path.resolve()),
            file_state,
            record.start_s,
            record.end_s,
            record.labels,
            record.exclusion,
            sorted(record.attributes.items()),
        ]
        digest.update(json.dumps(item, default=str).encode())
    return digest.hexdigest()[:24]


def _check_cache_location(cache_dir: Path, data_dir: Path) -> None:
    cache, data = cache_dir.resolve(), data_dir.resolve()
    if cache == data or data in cache.parents:
        raise ValueError(
            f"cache folder {cache_dir} is inside the data folder {data_dir}; input folders are "
            "never written, so choose a cache folder elsewhere (--cache_dir or LUNGSOUND_CACHE_DIR)"
        )


def _row_for(record: ClipRecord, sample_rate_hz: int, cleaning: CleaningConfig, attribute_names):
    """Decode one clip and describe it as a table row (audio duplicates are resolved later)."""
    row = {
        "filename": record.clip_id,
        "audio": [],
        "num_samples": 0,
        "duration_s": 0.0,
        "source_sample_rate_hz": 0,
        "source_channels": 0,
        "source_subtype": "",
        "clipped_fraction": 0.0,
        "content_hash": "",
        "path": str(record.path),
        "start_s": np.nan if record.start_s is None else record.start_s,
        "end_s": np.nan if record.end_s is None else record.end_s,
    }
    labels = record.labels if record.labels is not None else (-1, -1, -1)
    row.update(dict(zip(LABELS, labels)))
    row["label_class"] = class_4(labels[1], labels[2]) if record.labels is not None else ""
    for name in attribute_names:
        row[name] = str(record.attributes.get(name, ""))

    exclusion = record.exclusion
    detail = record.attributes.get("exclusion_detail", "")
    pretrain_allowed = record.attributes.get("pretrain_allowed", "1") != "0"

    if exclusion == R.FILE_MISSING or not record.path.exists():
        row.update(exclusion=R.FILE_MISSING, exclusion_detail=f"{record.path} not found", pretrain_ok=False)
        return row
    try:
        audio = decode_clip(record.path, sample_rate_hz, record.start_s, record.end_s)
    except AudioDecodeError as error:
        row.update(exclusion=R.UNREADABLE, exclusion_detail=str(error), pretrain_ok=False)
        return row

    row.update(
        num_samples=int(audio.waveform.size),
        duration_s=audio.source_num_samples / audio.source_sample_rate_hz,
        source_sample_rate_hz=audio.source_sample_rate_hz,
        source_channels=audio.source_channels,
        source_subtype=audio.source_subtype,
        clipped_fraction=audio.clipped_fraction,
        content_hash=audio.content_hash,
    )
    audio_reason, audio_detail = audio_exclusion(audio, cleaning)
    if audio_reason is not None:
        # An audio problem outranks a label problem: it is the reason the clip is unusable at all.
        exclusion, detail = audio_reason, audio_detail
    row["exclusion"] = exclusion or ""
    row["exclusion_detail"] = detail if exclusion else ""
    row["pretrain_ok"] = pretrain_allowed and (audio_reason is None or audio_reason not in R.AUDIO_REASONS)
    if row["pretrain_ok"] or audio_reason == R.CLIPPED:
        row["audio"] = audio.waveform
    return row


def _generate_rows(records, sample_rate_hz, cleaning, attribute_names):
    for record in records:
        yield _row_for(record, sample_rate_hz, cleaning, attribute_names)


def _mark_duplicates(dataset: datasets.Dataset, drop: bool) -> tuple[datasets.Dataset, list[dict]]:
    """Exclude every clip whose audio equals an earlier clip's, and list label disagreements."""
    hashes = dataset["content_hash"]
    first_by_hash: dict[str, int] = {}
    duplicate_of: dict[int, int] = {}
    for index, value in enumerate(hashes):
        if not value:
            continue
        if value in first_by_hash:
            duplicate_of[index] = first_by_hash[value]
        else:
            first_by_hash[value] = index

    disagreements = []
    if not duplicate_of:
        return dataset, disagreements
    names = dataset["filename"]
    classes = dataset["label_class"]
    for index, first in duplicate_of.items():
        if classes[index] != classes[first]:
            disagreements.append(
                {"filename": names[index], "duplicate_of": names[first],
                 "labels": classes[index], "labels_of_kept": classes[first]}
            )
    if not drop:
        return dataset, disagreements

    def update(row, index):
        if index in duplicate_of:
            row["exclusion"] = R.DUPLICATE
            row["exclusion_detail"] = f"same audio as {names[duplicate_of[index]]}"
            row["pretrain_ok"] = False
            row["audio"] = []
        return row

    return dataset.map(update, with_indices=True, desc="marking duplicates"), disagreements


def build_clip_table(
    records: list[ClipRecord],
    *,
    data_dir: str | Path,
    data_format: str,
    sample_rate_hz: int = 16000,
    cleaning: CleaningConfig | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[ClipTable, list[dict]]:
    """Decode and clean ``records`` into a cached clip table.

    Returns:
        The table and the list of duplicate clips whose labels disagree with
        the clip kept.
    """
    cleaning = cleaning or CleaningConfig()
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _check_cache_location(cache_dir, data_dir)

    fingerprint = fingerprint_records(records, sample_rate_hz, cleaning, data_format)
    table_dir = cache_dir / fingerprint
    disagreements_path = table_dir / "duplicate_label_disagreements.json"
    if (table_dir / "dataset_info.json").exists() and disagreements_path.exists():
        logger.info("loading %d decoded clips from cache %s", len(records), table_dir)
        dataset = datasets.load_from_disk(str(table_dir))
        disagreements = json.loads(disagreements_path.read_text())
        return ClipTable(dataset, sample_rate_hz, data_dir, data_format, fingerprint), disagreements

    attribute_names = sorted({k for r in records for k in r.attributes} - set(_FIXED_COLUMNS) - {"exclusion_detail"})
    features = datasets.Features(
        {**_FIXED_COLUMNS, **{name: datasets.Value("string") for name in attribute_names}}
    )
    logger.info("decoding %d clips from %s to %d Hz (cache %s)", len(records), data_dir, sample_rate_hz, table_dir)
    build_dir = cache_dir / f"{fingerprint}.build"
    shutil.rmtree(build_dir, ignore_errors=True)
    dataset = datasets.Dataset.from_generator(
        _generate_rows,
        features=features,
        cache_dir=str(build_dir),
        gen_kwargs={
            "records": records,
            "sample_rate_hz": sample_rate_hz,
            "cleaning": cleaning,
            "attribute_names": tuple(attribute_names),
        },
    )
    dataset, disagreements = _mark_duplicates(dataset, cleaning.drop_duplicates)

    tmp_dir = cache_dir / f"{fingerprint}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    dataset.save_to_disk(str(tmp_dir))
    (tmp_dir / "duplicate_label_disagreements.json").write_text(json.dumps(disagreements, indent=2))
    shutil.rmtree(table_dir, ignore_errors=True)
    tmp_dir.rename(table_dir)
    shutil.rmtree(build_dir, ignore_errors=True)

    dataset = datasets.load_from_disk(str(table_dir))
    return ClipTable(dataset, sample_rate_hz, data_dir, data_format, fingerprint), disagreements
