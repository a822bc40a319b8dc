"""The pretraining job behind ``pretrain/run.py``: data, encoder, ``Trainer``, saved encoder.

Files written into ``OUTPUT_DIR``:

- the encoder, by ``AudioEncoder.save_pretrained``: ``config.json``,
  ``model.safetensors``, ``lungsound_encoder.json`` and, when the front-end
  matches a transformers feature extractor, ``preprocessor_config.json``;
- ``run_config.yaml``: the resolved options;
- ``pretraining_data.json``: each data folder with its fingerprint and clip
  count, and the health metrics before and after training;
- ``data_report.json``: the cleaning report of ``--data_dir``;
- ``trainer_state.json``, ``run_info.json`` and the ``Trainer``'s
  ``checkpoint-N`` folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.config import config_to_dict
from lungsound_ssl.data import DataConfig, load_clips, table_from_records
from lungsound_ssl.data.formats import read_records
from lungsound_ssl.data.prepare import prepare_data
from lungsound_ssl.data.recordings import crop_recordings
from lungsound_ssl.data.table import ClipTable
from lungsound_ssl.encoders import AudioEncoder, build_encoder, load_encoder_config
from lungsound_ssl.pretraining import (
    ClipAudioDataset,
    ContrastiveModel,
    ContrastiveTrainer,
    PretrainArguments,
    TwoViewCollator,
)

logger = logging.getLogger(__name__)

PRETRAINING_DATA_FILE = "pretraining_data.json"
RUN_CONFIG_FILE = "run_config.yaml"

# Fewest labelled clips for which the grouped linear probe is worth running.
MIN_PROBE_CLIPS = 20

# Value of --resume_from_checkpoint that picks the newest checkpoint-N in the output folder.
LAST_CHECKPOINT = "last"

# Keys of a folder's cleaning report copied into pretraining_data.json (the per-clip lists are left out).
_REPORT_SUMMARY_KEYS = (
    "n_listed",
    "n_decoded",
    "n_pretrain",
    "duration_counts",
    "exclusion_counts",
)


@dataclasses.dataclass
class PretrainingFolder:
    """One data folder's clips in the pretraining set."""

    table: ClipTable
    report: dict
    clips: str  # "annotated clips", or how recordings were cut into crops


def _recompute_norm_stats(encoder: AudioEncoder, dataset, args: PretrainArguments, seed: int) -> None:
    """Replace AudioSet's log-mel statistics by those of a random sample of the pretraining clips."""
    from lungsound_ssl.features import compute_normalization_stats

    if encoder.config.architecture != "ast" or args.model_name_or_path:
        raise ValueError(
            "--norm_stats_clips applies to an AST trained from scratch only; a pretrained encoder keeps "
            "the statistics its weights were trained with. Set --norm_stats_clips 0"
        )
    rng = np.random.default_rng(seed)
    positions = rng.choice(len(dataset), size=min(args.norm_stats_clips, len(dataset)), replace=False)
    mean, std = compute_normalization_stats(encoder.frontend, [dataset[int(p)]["audio"] for p in positions])
    encoder.set_normalization_stats(mean, std)
    logger.info("log-mel normalisation recomputed on %d clips: mean %.3f, std %.3f", len(positions), mean, std)


def build_pretrain_encoder(args: PretrainArguments) -> AudioEncoder:
    """Build the encoder from ``--model_name_or_path`` or from the ``--encoder`` preset."""
    overrides = {} if args.clip_seconds is None else {"clip_seconds": args.clip_seconds}
    if args.model_name_or_path:
        return AudioEncoder.from_pretrained(args.model_name_or_path, **overrides)
    return build_encoder(load_encoder_config(args.encoder, **overrides))


def load_recording_crops(
    data_config: DataConfig, crop_seconds: float, hop_seconds: float
) -> tuple[ClipTable, dict]:
    """Cut every recording of ``data_config.data_dir`` into overlapping unlabelled crops and decode them.

    Returns the clip table of the crops and its cleaning report.
    """
    data_dir = Path(data_config.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder not found: {data_dir}; pass an existing folder to --extra_data_dirs"
        )
    data_format, records = read_records(
        data_dir, data_config.data_format, data_config.sprsound_options()
    )
    crops = crop_recordings(records, crop_seconds, hop_seconds)
    return table_from_records(crops, data_dir, data_format, data_config)


def load_extra_folders(args: PretrainArguments, data_config: DataConfig) -> list[PretrainingFolder]:
    """Load the clips, or the recording crops, of each ``--extra_data_dirs`` folder."""
    main_dir = Path(data_config.data_dir).resolve()
    seen = {main_dir}
    folders = []
    for extra_dir in args.extra_data_dirs:
        if Path(extra_dir).resolve() in seen:
            raise ValueError(
                f"data folder {extra_dir} is given twice (as --data_dir or in --extra_data_dirs); "
                "list each folder once, or its clips would count as different clips"
            )
        seen.add(Path(extra_dir).resolve())
        extra_config = dataclasses.replace(data_config, data_dir=extra_dir, data_format="auto")
        if args.extra_crop_seconds > 0:
            hop_seconds = args.extra_hop_or_default_seconds
            table, report = load_recording_crops(extra_config, args.extra_crop_seconds, hop_seconds)
            clips = f"recording crops of {args.extra_crop_seconds:g} s every {hop_seconds:g} s"
        else:
            table, report = load_clips(extra_config)
            clips = "annotated clips"
        folders.append(PretrainingFolder(table, report, clips))
    return folders


def resolve_checkpoint(value: str | None, output_dir: str | Path) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint folder: a path, ``last`` or empty (no resume).

    Raises:
        FileNotFoundError: if the folder does not exist, or ``last`` finds no checkpoint.
    """
    if not value:
        return None
    if value == LAST_CHECKPOINT:
        last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint last found no checkpoint-N folder in {output_dir}; "
                "pass the --output_dir of the interrupted run, or start without --resume_from_checkpoint"
            )
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(
            f"checkpoint folder not found: {value}; pass a checkpoint-N folder or 'last'"
        )
    return value


def check_training_args(training_args: TrainingArguments) -> None:
    """Set the ``Trainer`` options that this job needs, whatever the YAML file contains."""
    # The dataset items ("audio", "index") are not arguments of forward(); the Trainer would drop them.
    training_args.remove_unused_columns = False
    if not training_args.dataloader_drop_last:
        # A short last batch would change the number of negatives, and a batch of one clip has none.
        logger.info("setting dataloader_drop_last: contrastive batches must be full")
        training_args.dataloader_drop_last = True
    if training_args.device.type == "cpu" and training_args.dataloader_pin_memory:
        # Pinned memory only speeds up copies to an accelerator; on CPU PyTorch warns and ignores it.
        training_args.dataloader_pin_memory = False


def probe_groups(table: ClipTable, indices: np.ndarray) -> np.ndarray:
    """Patient ids, else recording ids, else clip ids (a clip-level probe split)."""
    for column in ("patient_id", "recording_id"):
        if table.has_attribute(column):
            values = np.asarray(table.column(column), dtype=object)[indices]
            return np.asarray(
                [v if v else f"clip{i}" for i, v in zip(indices, values)], dtype=object
            )
    logger.info(
        "linear probe: no patient or recording ids, so its split is clip-level and optimistic"
    )
    return np.asarray([f"clip{i}" for i in indices], dtype=object)


def select_probe_clips(table: ClipTable, probe_clips: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of up to ``probe_clips`` labelled clips, or none when too few exist for a probe."""
    labelled = table.trainable_indices()
    if probe_clips == 0 or len(labelled) < MIN_PROBE_CLIPS:
        if probe_clips > 0:
            logger.info(
                "linear probe off: %d labelled clip(s) in %s, fewer than %d",
                len(labelled),
                table.data_dir,
                MIN_PROBE_CLIPS,
            )
        return np.array([], dtype=np.int64)
    return np.sort(rng.choice(labelled, size=min(probe_clips, len(labelled)), replace=False))


def run_pretraining(
    args: PretrainArguments,
    data_config: DataConfig,
    augment: AugmentConfig,
    training_args: TrainingArguments,
) -> Path:
    """Pretrain an encoder and save it to ``training_args.output_dir``; return that folder."""
    check_training_args(training_args)
    output_dir = Path(training_args.output_dir)
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    main_process = training_args.process_index == 0
    set_seed(training_args.seed)

    # The main process decodes and caches first; the others then load its cache instead of racing to write it.
    with training_args.main_process_first(desc="loading the clips"):
        prepared = prepare_data(data_config, None, output_dir, main_process=main_process)
        folders = [PretrainingFolder(prepared.table, prepared.report, "annotated clips")]
        folders += load_extra_folders(args, data_config)
    tables = [f.table for f in folders]
    dataset = ClipAudioDataset(tables, [t.pretrain_indices() for t in tables])
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    if len(dataset) < max(2, global_batch):
        raise ValueError(
            f"only {len(dataset)} clip(s) usable for pretraining but the global batch has {global_batch}; "
            "add data or lower --per_device_train_batch_size (contrastive learning needs at least 2 clips)"
        )

    encoder = build_pretrain_encoder(args)
    if args.norm_stats_clips > 0:
        _recompute_norm_stats(encoder, dataset, args, training_args.seed)
    model = ContrastiveModel(encoder, args, augment)
    config = encoder.config
    collator = TwoViewCollator(
        config.clip_samples, config.pad_mode, config.fade_samples, augment, training_args.seed
    )

    # Fixed evaluation material: the same clips and views at every evaluation, and after a resume.
    rng = np.random.default_rng(training_args.seed)
    health_batch = None
    if args.health_clips > 0:
        health_positions = np.sort(
            rng.choice(len(dataset), size=min(args.health_clips, len(dataset)), replace=False)
        )
        health_collator = TwoViewCollator(
            config.clip_samples,
            config.pad_mode,
            config.fade_samples,
            augment,
            training_args.seed + 1,
        )
        health_batch = health_collator([dataset[int(p)] for p in health_positions])
    table = prepared.table
    probe_indices = select_probe_clips(table, args.probe_clips, rng)
    probe_kwargs = {}
    if len(probe_indices):
        probe_kwargs = {
            "probe_clips": ClipAudioDataset([table], [probe_indices]),
            "probe_labels": table.labels(probe_indices),
            "probe_groups": probe_groups(table, probe_indices),
        }

    _log_start(
        args,
        training_args,
        encoder,
        folders,
        len(dataset),
        health_batch,
        len(probe_indices),
        resume,
    )
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=collator,
        health_batch=health_batch,
        **probe_kwargs,
    )
    # The untrained baseline, so the log shows whether representations improve. The Trainer runs it
    # inside train(), so it lands in the log history that checkpoints keep; a resumed run has it already.
    training_args.eval_on_start = not resume
    trainer.train(resume_from_checkpoint=resume)
    if trainer.last_eval_step != trainer.state.global_step:
        trainer.evaluate()

    if main_process:
        _save_outputs(
            output_dir, encoder, trainer, args, data_config, augment, training_args, folders
        )
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _log_start(
    args, training_args, encoder, folders, n_clips, health_batch, n_probe, resume
) -> None:
    config = encoder.config
    world_size = training_args.world_size
    global_batch = (
        training_args.per_device_train_batch_size
        * world_size
        * training_args.gradient_accumulation_steps
    )
    for folder in folders:
        logger.info(
            "pretraining data: %s (%s, %s): %d clips",
            folder.table.data_dir,
            folder.table.data_format,
            folder.clips,
            len(folder.table.pretrain_indices()),
        )
    if training_args.max_steps > 0:
        length = f"{training_args.max_steps} steps ({training_args.max_steps * global_batch / n_clips:.1f} epochs)"
    else:
        length = f"{training_args.num_train_epochs:g} epochs ({n_clips // global_batch} steps each)"
    logger.info(
        "pretraining a %s encoder (D=%d, %.1fM parameters) on %d clips with %s loss: %d process(es), "
        "%d per device, global batch %d, %s, %.2f s crops; health check on %d clips, linear probe on %d clips; "
        "device %s with %d CPU thread(s) per process%s",
        config.architecture,
        encoder.hidden_size,
        sum(p.numel() for p in encoder.parameters()) / 1e6,
        n_clips,
        args.loss,
        world_size,
        training_args.per_device_train_batch_size,
        global_batch,
        length,
        config.clip_seconds,
        0 if health_batch is None else health_batch["view_a"].shape[0],
        n_probe,
        training_args.device,
        torch.get_num_threads(),
        f"; resuming from {resume}" if resume else "",
    )


def _eval_history(trainer) -> tuple[dict, dict]:
    """Return the first and the last evaluation of the run, each with its step, from the log history."""
    evaluations = [
        {k: v for k, v in entry.items() if k.startswith("eval_") or k == "step"}
        for entry in trainer.state.log_history
        if any(k.startswith("eval_") for k in entry)
    ]
    if not evaluations:
        return {}, {}
    return evaluations[0], evaluations[-1]


def _save_outputs(output_dir, encoder, trainer, args, data_config, augment, training_args, folders):
    from lungsound_ssl.runinfo import write_run_info

    encoder.save_pretrained(output_dir)
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    resolved = {
        "pretrain": config_to_dict(args),
        "data": config_to_dict(data_config),
        "augment": config_to_dict(augment),
        "training": training_args.to_dict(),
    }
    (output_dir / RUN_CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))

    initial_metrics, final_metrics = _eval_history(trainer)
    pretraining_data = {
        "folders": [
            {
                "data_dir": str(f.table.data_dir.resolve()),
                "data_format": f.table.data_format,
                "fingerprint": f.table.fingerprint,
                "clips": f.clips,
                "n_clips": len(f.table.pretrain_indices()),
                "report": {k: f.report[k] for k in _REPORT_SUMMARY_KEYS if k in f.report},
            }
            for f in folders
        ],
        "n_clips": int(sum(len(f.table.pretrain_indices()) for f in folders)),
        "initial_metrics": initial_metrics,
        "final_metrics": final_metrics,
    }
    (output_dir / PRETRAINING_DATA_FILE).write_text(json.dumps(pretraining_data, indent=2))
    write_run_info(output_dir, resolved, training_args.seed)
    logger.info(
        "saved the pretrained encoder to %s; health before %s, after %s",
        output_dir,
        initial_metrics,
        final_metrics,
    )
