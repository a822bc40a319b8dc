"""Worker for test_distributed_loss.py, run by ``accelerate launch`` on several processes.

Each process takes its rows of a fixed global batch, computes the losses and
their gradients, and saves them to ``OUTPUT_DIR/rank{R}.pt``. The test compares
these with a single-process run on the whole global batch.

Usage: accelerate launch ... tests/_dist_loss_worker.py OUTPUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from lungsound_ssl.losses import COLALoss, NTXentLoss, ProjectionHead

# Sizes of the fixed global batch, shared with the test.
GLOBAL_ROWS = 8
EMBEDDING_DIM = 6
FEATURE_DIM = 5
TEMPERATURE = 0.2
SEED = 1234


def make_global_batch() -> dict[str, torch.Tensor]:
    """Return the inputs every process and the single-process reference start from."""
    generator = torch.Generator().manual_seed(SEED)
    return {
        "z_a": torch.randn(GLOBAL_ROWS, EMBEDDING_DIM, generator=generator),
        "z_b": torch.randn(GLOBAL_ROWS, EMBEDDING_DIM, generator=generator),
        "x_a": torch.randn(GLOBAL_ROWS, FEATURE_DIM, generator=generator),
        "x_b": torch.randn(GLOBAL_ROWS, FEATURE_DIM, generator=generator),
        "bilinear": torch.randn(EMBEDDING_DIM, EMBEDDING_DIM, generator=generator),
    }


def row_ranges(world_size: int, uneven: bool) -> list[tuple[int, int]]:
    """Split GLOBAL_ROWS into one contiguous range per rank, equal or (uneven, two ranks) 5 and 3 rows."""
    if not uneven:
        size = GLOBAL_ROWS // world_size
        return [(rank * size, (rank + 1) * size) for rank in range(world_size)]
    # Only defined for two processes: rows [0, 5) and [5, 8).
    return [(0, 5), (5, GLOBAL_ROWS)]


class ContrastiveModel(nn.Module):
    """Projection head plus NT-Xent with a learnable temperature, as pretraining wires them."""

    def __init__(self) -> None:
        super().__init__()
        self.head = ProjectionHead(FEATURE_DIM, hidden_dim=7, output_dim=EMBEDDING_DIM, norm="none")
        self.loss = NTXentLoss(temperature=TEMPERATURE, learnable_temperature=True)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        return self.loss(self.head(x_a), self.head(x_b))


def leaf_slices(
    batch: dict[str, torch.Tensor], start: int, stop: int, *names: str
) -> list[torch.Tensor]:
    return [batch[name][start:stop].clone().requires_grad_(True) for name in names]


def main() -> None:
    output_dir = Path(sys.argv[1])
    accelerator = Accelerator(cpu=True)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    batch = make_global_batch()
    results: dict[str, object] = {"world_size": world_size}

    # NT-Xent on even and uneven splits: loss value and input gradients.
    for uneven in (False, True):
        start, stop = row_ranges(world_size, uneven)[rank]
        z_a, z_b = leaf_slices(batch, start, stop, "z_a", "z_b")
        loss = NTXentLoss(temperature=TEMPERATURE)(z_a, z_b)
        loss.backward()
        key = "ntxent_uneven" if uneven else "ntxent"
        results[key] = {
            "loss": loss.item(),
            "grad_a": z_a.grad,
            "grad_b": z_b.grad,
            "rows": (start, stop),
        }

    # COLA: loss value and input gradients.
    start, stop = row_ranges(world_size, uneven=False)[rank]
    z_a, z_b = leaf_slices(batch, start, stop, "z_a", "z_b")
    cola = COLALoss(embedding_dim=EMBEDDING_DIM)
    with torch.no_grad():
        cola.bilinear.copy_(batch["bilinear"])
    loss = cola(z_a, z_b)
    loss.backward()
    results["cola"] = {
        "loss": loss.item(),
        "grad_a": z_a.grad,
        "grad_b": z_b.grad,
        "rows": (start, stop),
    }

    # A model wrapped by accelerate (DistributedDataParallel): parameter gradients.
    torch.manual_seed(SEED)
    model = accelerator.prepare(ContrastiveModel())
    loss = model(batch["x_a"][start:stop], batch["x_b"][start:stop])
    accelerator.backward(loss)
    named = accelerator.unwrap_model(model).named_parameters()
    results["model"] = {
        "loss": loss.item(),
        "grads": {name: parameter.grad.clone() for name, parameter in named},
    }

    torch.save(results, output_dir / f"rank{rank}.pt")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
