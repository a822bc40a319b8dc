"""Measure log-mel front-end throughput: batched LogMelFrontend against ASTFeatureExtractor.

Both compute the same features from the same real clips, cropped or
zero-padded to one crop length, and the script reports clips per second for
each and their ratio, measured in one run. It also prints the largest
difference between the two outputs as a check that they did the same work.

Example:
    python benchmarks/frontend_throughput.py --num-clips 256 --clip-seconds 10.24
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import transformers
from transformers import ASTFeatureExtractor

from lungsound_ssl.cropping import SAMPLE_RATE_HZ, crop_or_pad, seconds_to_samples
from lungsound_ssl.features import LogMelFrontend, frames_for_samples

logger = logging.getLogger("frontend_throughput")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icbhi-cycles"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="Folder with train/*.wav clips."
    )
    parser.add_argument(
        "--num-clips", type=int, default=256, help="Number of clips (the first ones by file name)."
    )
    parser.add_argument("--clip-seconds", type=float, default=10.24, help="Crop length in seconds.")
    parser.add_argument("--num-mel-bins", type=int, default=128, help="Mel bins.")
    parser.add_argument("--batch-size", type=int, default=64, help="Clips per LogMelFrontend call.")
    parser.add_argument(
        "--device", default="cpu", help="Device for LogMelFrontend, for example cpu or cuda."
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Timed passes over all clips; the median is reported.",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="Also write the results to this JSON file."
    )
    return parser.parse_args()


def load_crops(data_dir: Path, num_clips: int, num_samples: int) -> list[np.ndarray]:
    paths = sorted((data_dir / "train").glob("*.wav"))[:num_clips]
    if not paths:
        raise FileNotFoundError(f"no .wav files in {data_dir / 'train'}; pass --data-dir")
    crops = []
    for path in paths:
        audio, sample_rate = sf.read(path, dtype="float32")
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE_HZ).astype(np.float32)
        crop, _ = crop_or_pad(audio, num_samples, mode="zero")
        crops.append(crop)
    return crops


def time_frontend(
    frontend: LogMelFrontend, crops: list[np.ndarray], batch_size: int, device: torch.device
):
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    outputs = []
    synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(crops), batch_size):
            batch = torch.from_numpy(np.stack(crops[first : first + batch_size])).to(device)
            features, _ = frontend(batch)
            outputs.append(features)
        synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, torch.cat(outputs).cpu().numpy()


def time_extractor(extractor: ASTFeatureExtractor, crops: list[np.ndarray], batch_size: int):
    outputs = []
    start = time.perf_counter()
    for first in range(0, len(crops), batch_size):
        batch = crops[first : first + batch_size]
        outputs.append(
            extractor(batch, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np")["input_values"]
        )
    elapsed = time.perf_counter() - start
    return elapsed, np.concatenate(outputs)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
    args = parse_args()
    device = torch.device(args.device)

    num_samples = seconds_to_samples(args.clip_seconds)
    num_frames = frames_for_samples(num_samples, 400, 160)
    crops = load_crops(args.data_dir, args.num_clips, num_samples)
    logger.info("loaded %d clips, %d samples (%d frames) each", len(crops), num_samples, num_frames)

    frontend = LogMelFrontend(num_frames=num_frames, num_mel_bins=args.num_mel_bins).to(device)
    extractor = ASTFeatureExtractor(num_mel_bins=args.num_mel_bins, max_length=num_frames)

    # One untimed pass each, so that one-time set-up (threads, kernels) is not measured.
    time_frontend(frontend, crops[: args.batch_size], args.batch_size, device)
    time_extractor(extractor, crops[:2], args.batch_size)

    frontend_times, extractor_times = [], []
    for repeat in range(args.repeats):
        seconds, frontend_out = time_frontend(frontend, crops, args.batch_size, device)
        frontend_times.append(seconds)
        seconds, extractor_out = time_extractor(extractor, crops, args.batch_size)
        extractor_times.append(seconds)
        logger.info(
            "pass %d: front-end %.3f s, extractor %.3f s",
            repeat + 1,
            frontend_times[-1],
            extractor_times[-1],
        )

    frontend_rate = len(crops) / statistics.median(frontend_times)
    extractor_rate = len(crops) / statistics.median(extractor_times)
    results = {
        "clips": len(crops),
        "clip_seconds": args.clip_seconds,
        "num_mel_bins": args.num_mel_bins,
        "batch_size": args.batch_size,
        "device": str(device),
        "frontend_clips_per_s": round(frontend_rate, 1),
        "extractor_clips_per_s": round(extractor_rate, 1),
        "speedup": round(frontend_rate / extractor_rate, 1),
        "max_abs_difference": float(np.abs(frontend_out - extractor_out).max()),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
