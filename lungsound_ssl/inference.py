"""Clip-level probabilities from a classifier, with centre crops or averaged sliding windows."""

from __future__ import annotations

import numpy as np
import torch

from lungsound_ssl.cropping import eval_windows_batch


@torch.no_grad()
def predict_probabilities(
    model,
    waveforms: list[np.ndarray],
    *,
    batch_size: int = 32,
    eval_crop: str | None = None,
    progress=None,
) -> np.ndarray:
    """Return per-label probabilities of N 16 kHz clips as an (N, L) array.

    Each clip is cut as the encoder is configured for evaluation: a centre
    crop, or sliding windows whose sigmoid probabilities are averaged per
    clip. ``eval_crop`` overrides the mode. ``progress`` is an optional
    callable taking the number of clips just finished (e.g. ``tqdm.update``).
    """
    model.eval()
    config = model.encoder.config
    device = next(model.parameters()).device
    mode = eval_crop or config.eval_crop
    hop_samples = int(round(config.eval_hop_seconds * 16000))
    fade_samples = int(round(config.fade_ms * 16))

    outputs = []
    for start in range(0, len(waveforms), batch_size):
        chunk = waveforms[start : start + batch_size]
        windows, masks, clip_index = eval_windows_batch(
            chunk, config.clip_samples, mode=mode, hop_samples=hop_samples, pad_mode=config.pad_mode,
            fade_samples=fade_samples,
        )
        probs = []
        # Windows of a few long clips can outnumber the batch size; score them in batch-sized slices.
        for w_start in range(0, len(windows), batch_size):
            w = torch.from_numpy(np.ascontiguousarray(windows[w_start : w_start + batch_size], dtype=np.float32))
            m = torch.from_numpy(np.asarray(masks[w_start : w_start + batch_size])).long()
            logits = model(w.to(device), m.to(device)).logits  # (W, L)
            probs.append(torch.sigmoid(logits.float()).cpu())
        probs = torch.cat(probs)  # (sum W_i, L)
        index = torch.from_numpy(np.asarray(clip_index))
        sums = torch.zeros(len(chunk), probs.shape[1]).index_add_(0, index, probs)
        counts = torch.bincount(index, minlength=len(chunk)).clamp(min=1).unsqueeze(1)
        outputs.append((sums / counts).numpy())  # (B, L): mean over each clip's windows
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(outputs) if outputs else np.zeros((0, len(model.config.id2label)), dtype=np.float32)
