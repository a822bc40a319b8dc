"""Contrastive losses, a projection head and label-free embedding health metrics.

Two random crops of one clip form a positive pair. Every other embedding of the
global batch, across all processes, is a negative.

Shape legend:
    n   rows of the local batch on this process
    N   rows of the global batch, summed over all processes
    D   embedding size

Distributed reduction:
    Each process computes the loss for its own n rows against all N (or 2N)
    candidates, sums it and scales it by ``world_size / rows_in_global_batch``.
    The mean of these per-process values is therefore the single-process loss
    on the global batch. ``gather_with_grad`` sends the gradient of every
    process's loss back to the rows that were gathered, so the gradient reaching
    a process's local inputs is ``world_size`` times the single-process one.
    DistributedDataParallel divides parameter gradients by ``world_size``, so
    parameter gradients equal those of single-process training on the global
    batch.

References:
    SimCLR / NT-Xent: Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", arXiv:2002.05709.
    COLA: Saeed et al. 2021, "Contrastive Learning of General-Purpose Audio
    Representations", arXiv:2010.10915.
    Alignment and uniformity: Wang & Isola 2020, "Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the
    Hypersphere", arXiv:2005.10242.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "COLALoss",
    "NTXentLoss",
    "ProjectionHead",
    "alignment",
    "contrastive_top1_accuracy",
    "embedding_health",
    "gather_with_grad",
    "uniformity",
]


# ---------------------------------------------------------------------------
# Gathering embeddings across processes
# ---------------------------------------------------------------------------


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _world_size() -> int:
    return dist.get_world_size() if _is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of possibly different counts, with a summed gradient.

    Hand-written rather than ``torch.distributed.nn.functional.all_gather``
    because that function (torch 2.13) requires every process to hold the same
    number of rows, and on gloo its backward emulates reduce-scatter with
    point-to-point all-to-all. This one pads to the largest row count, so a
    short last batch works, and it needs only ``all_gather`` and ``all_reduce``,
    which gloo and NCCL both support. The backward all-reduces the whole
    (N, D) gradient instead of reduce-scattering it. That sends world_size
    times more data, which is little for a batch of embeddings.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, row_counts: list[int], rank: int) -> torch.Tensor:
        max_rows = max(row_counts)

        # (n, D) -> (max_rows, D) so that every process sends the same shape.
        padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        chunks = [torch.empty_like(padded) for _ in row_counts]
        dist.all_gather(chunks, padded.contiguous())

        ctx.row_counts = row_counts
        ctx.rank = rank
        # world_size x (max_rows, D) -> (N, D), dropping the padding rows.
        return torch.cat([chunk[:count] for chunk, count in zip(chunks, row_counts)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # Every process's loss depends on every gathered row, so the gradient of
        # a row is the sum over processes of the gradients of their losses.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)

        start = sum(ctx.row_counts[: ctx.rank])
        return grad[start : start + ctx.row_counts[ctx.rank]], None, None


def _gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Gather ``tensor`` from all processes and return it with this process's first row."""
    if not _is_distributed():
        return tensor, 0

    # Row counts can differ between processes when the last batch is short.
    count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    row_counts = [int(c.item()) for c in counts]

    rank = dist.get_rank()
    gathered = _GatherWithGrad.apply(tensor, row_counts, rank)
    return gathered, sum(row_counts[:rank])


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes in rank order, keeping gradients.

    The gradient that flows back into a process's ``tensor`` is the sum over
    processes of the gradients with respect to its rows in the gathered
    result. Without an initialised process group of more than one process,
    ``tensor`` is returned unchanged.

    Shape:
        tensor: (n, ...), where n may differ between processes.
        returns: (N, ...), N the sum of n over processes.
    """
    return _gather_rows(tensor)[0]


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.dim() != 2 or z_b.dim() != 2:
        raise ValueError(
            f"expected 2-D embeddings (B, D), got z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)}"
        )
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must have the same shape, "
            "with row i of each containing the two views of clip i"
        )


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


class NTXentLoss(nn.Module):
    """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR.

    For each of the 2N embeddings of the global batch, the positive is the
    other view of the same clip and the negatives are the other 2N - 2
    embeddings. Embeddings are L2-normalised inside, so cosine similarity
    divided by the temperature is the logit.

    A learnable temperature is stored as its logarithm, which keeps it
    positive and makes steps relative. Before each forward pass the logarithm
    is projected back into ``[log(min_temperature), log(max_temperature)]``
    in place. Clamping the value inside the graph would instead zero its
    gradient and could leave the parameter stuck outside the range.
    Exclude ``log_temperature`` from weight decay, which would pull the
    temperature towards 1.

    Args:
        temperature: Initial (or fixed) temperature.
        learnable_temperature: Whether the temperature is an ``nn.Parameter``.
        min_temperature: Lower bound of a learnable temperature.
        max_temperature: Upper bound of a learnable temperature.
        gather_distributed: Use the embeddings of all processes as negatives.

    Shape:
        z_a, z_b: (n, D) local embeddings of the two views, row i of each from
            the same clip.
        returns: scalar. Its mean over processes is the loss on the global
            batch (see the module docstring).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < min_temperature <= max_temperature:
            raise ValueError(
                f"invalid temperature bounds [{min_temperature}, {max_temperature}]; "
                "pass 0 < min_temperature <= max_temperature"
            )
        if not min_temperature <= temperature <= max_temperature:
            raise ValueError(
                f"temperature {temperature} is outside [{min_temperature}, {max_temperature}]; "
                "pick a value inside the bounds or widen them"
            )
        self.learnable_temperature = learnable_temperature
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.gather_distributed = gather_distributed

        log_temperature = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        """Current temperature as a 0-d tensor (with gradient when learnable)."""
        return self.log_temperature.exp()

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        _check_pair(z_a, z_b)
        if self.learnable_temperature:
            with torch.no_grad():
                self.log_temperature.clamp_(
                    math.log(self.min_temperature), math.log(self.max_temperature)
                )

        # Logits in float32 even under autocast, because exp() of similarity / 0.01
        # overflows float16.
        z_a = F.normalize(z_a.float(), dim=1)
        z_b = F.normalize(z_b.float(), dim=1)
        if self.gather_distributed:
            all_a, start = _gather_rows(z_a)
            all_b, _ = _gather_rows(z_b)
        else:
            all_a, all_b, start = z_a, z_b, 0
        n = z_a.shape[0]
        total = all_a.shape[0]

        # Candidates: the 2N global embeddings, views a first. Anchors: the 2n local ones.
        candidates = torch.cat([all_a, all_b], dim=0)  # (2N, D)
        anchors = torch.cat([z_a, z_b], dim=0)  # (2n, D)
        logits = anchors @ candidates.T / self.temperature  # (2n, 2N)

        local_index = torch.arange(n, device=z_a.device) + start
        own_column = torch.cat([local_index, local_index + total])  # each anchor's own column
        positive_column = torch.cat([local_index + total, local_index])
        self_mask = F.one_hot(own_column, num_classes=2 * total).bool()
        logits = logits.masked_fill(self_mask, float("-inf"))

        loss_sum = F.cross_entropy(logits, positive_column, reduction="sum")
        world_size = _world_size() if self.gather_distributed else 1
        return loss_sum * world_size / (2 * total)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature.item():.4g}, learnable={self.learnable_temperature}, "
            f"bounds=[{self.min_temperature}, {self.max_temperature}], "
            f"gather_distributed={self.gather_distributed}"
        )


class COLALoss(nn.Module):
    """COLA loss: bilinear similarity and cross-entropy over in-batch candidates.

    For anchor i of view a, the logits are ``z_a[i] @ W @ z_b[j]`` over all N
    view-b embeddings j of the global batch, and the target is j = i. As in
    COLA, the loss runs in this one direction and has no temperature. COLA
    bounds the embeddings with a LayerNorm and tanh in its head instead of
    L2-normalising them; ``normalize=True`` normalises them here.

    ``W`` starts as the identity, so training starts from dot-product
    similarity instead of a random one.

    Args:
        embedding_dim: D, the size of the embeddings.
        normalize: L2-normalise the embeddings before the bilinear product.
        gather_distributed: Use the view-b embeddings of all processes as candidates.

    Shape:
        z_a, z_b: (n, D).
        returns: scalar. Its mean over processes is the loss on the global batch.
    """

    def __init__(
        self, embedding_dim: int, normalize: bool = False, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.gather_distributed = gather_distributed
        self.bilinear = nn.Parameter(torch.eye(embedding_dim))

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        _check_pair(z_a, z_b)
        if z_a.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings have size {z_a.shape[1]} but COLALoss was built for "
                f"embedding_dim={self.embedding_dim}"
            )
        z_a = z_a.float()
        z_b = z_b.float()
        if self.normalize:
            z_a = F.normalize(z_a, dim=1)
            z_b = F.normalize(z_b, dim=1)
        if self.gather_distributed:
            all_b, start = _gather_rows(z_b)
        else:
            all_b, start = z_b, 0
        total = all_b.shape[0]

        logits = (z_a @ self.bilinear) @ all_b.T  # (n, D) @ (D, D) @ (D, N) -> (n, N)
        targets = torch.arange(z_a.shape[0], device=z_a.device) + start

        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        world_size = _world_size() if self.gather_distributed else 1
        return loss_sum * world_size / total


# ---------------------------------------------------------------------------
# Projection head
# ---------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """Two-layer MLP that maps clip embeddings into the space of the contrastive loss.

    ``norm="batch"`` gives Linear-BatchNorm-ReLU-Linear, as in SimCLR's code;
    ``"layer"`` gives Linear-LayerNorm-ReLU-Linear; ``"none"`` gives
    Linear-ReLU-Linear, the head described in the SimCLR paper.

    NOTE: BatchNorm statistics are per process, so with ``norm="batch"`` and
    several processes the loss differs slightly from single-process training.
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` fixes that on CUDA.
    ``"layer"`` and ``"none"`` do not depend on the rest of the batch.
    Batch norm also needs more than one row per process in training mode.

    Shape:
        embeddings: (B, input_dim) -> (B, output_dim)
    """

    _NORMS = ("batch", "layer", "none")

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int | None = None,
        output_dim: int = 128,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        hidden_dim = input_dim if hidden_dim is None else hidden_dim
        for name, value in (
            ("input_dim", input_dim),
            ("hidden_dim", hidden_dim),
            ("output_dim", output_dim),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if norm not in self._NORMS:
            raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(self._NORMS)}")

        # The first Linear has no bias when a norm layer follows, because the norm removes it.
        layers: list[nn.Module] = [nn.Linear(input_dim, hidden_dim, bias=norm == "none")]
        if norm == "batch":
            layers.append(nn.BatchNorm1d(hidden_dim))
        elif norm == "layer":
            layers.append(nn.LayerNorm(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


# ---------------------------------------------------------------------------
# Label-free health metrics
# ---------------------------------------------------------------------------


@torch.no_grad()
def contrastive_top1_accuracy(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Return the fraction of the 2B embeddings whose nearest neighbour is their positive.

    This is the NT-Xent task scored as retrieval. Each embedding's candidates
    are the other 2B - 1, ranked by cosine similarity, and a hit means the
    other view of its own clip ranks first. Ties go to the lowest index. Chance
    level is 1 / (2B - 1).

    Shape:
        z_a, z_b: (B, D)
    """
    _check_pair(z_a, z_b)
    batch = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # (2B, D)
    similarity = z @ z.T  # (2B, 2B)
    similarity.fill_diagonal_(float("-inf"))

    index = torch.arange(batch, device=z.device)
    positive = torch.cat([index + batch, index])
    return (similarity.argmax(dim=1) == positive).float().mean().item()


def alignment(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Return the alignment loss of Wang & Isola: mean of ||f(x) - f(y)||^alpha over positive pairs.

    Embeddings are L2-normalised first, so the value lies in [0, 2^alpha];
    lower means the two views of a clip map closer together.

    Shape:
        z_a, z_b: (B, D) -> scalar
    """
    _check_pair(z_a, z_b)
    z_a = F.normalize(z_a.float(), dim=1)
    z_b = F.normalize(z_b.float(), dim=1)
    return (z_a - z_b).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Return the uniformity loss of Wang & Isola: log mean over pairs of exp(-t ||z_i - z_j||^2).

    Embeddings are L2-normalised first and the mean runs over the B (B - 1) / 2
    distinct pairs. Lower means the embeddings spread more evenly over the
    sphere. The value is 0 when all embeddings coincide and -4t is its lower bound.

    Shape:
        z: (B, D) with B >= 2 -> scalar
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(
            f"uniformity needs 2-D embeddings (B, D) with B >= 2, got {tuple(z.shape)}"
        )
    z = F.normalize(z.float(), dim=1)

    # ||z_i - z_j||^2 = 2 - 2 cos for unit vectors. Unlike torch.pdist, this has
    # a finite gradient where two embeddings coincide.
    rows, cols = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    squared_distances = (2 - 2 * (z[rows] * z[cols]).sum(dim=1)).clamp_min(0)
    return squared_distances.mul(-t).exp().mean().log()


@torch.no_grad()
def embedding_health(z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, float]:
    """Return the label-free health metrics of a batch of view pairs as floats.

    Keys: ``alignment`` (alpha=2), ``uniformity`` (t=2, mean of the two views,
    as Wang & Isola report it) and ``contrastive_top1``. A collapsed encoder
    shows alignment near 0 with uniformity near 0, and top-1 near chance.

    Shape:
        z_a, z_b: (B, D) with B >= 2
    """
    _check_pair(z_a, z_b)
    return {
        "alignment": alignment(z_a, z_b).item(),
        "uniformity": ((uniformity(z_a) + uniformity(z_b)) / 2).item(),
        "contrastive_top1": contrastive_top1_accuracy(z_a, z_b),
    }
