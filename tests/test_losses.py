"""Tests of the contrastive losses, the projection head and the health metrics.

The losses are checked against naive per-pair loops written from the formulas
of the papers, and against values worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from lungsound_ssl.losses import (
    COLALoss,
    NTXentLoss,
    ProjectionHead,
    alignment,
    contrastive_top1_accuracy,
    embedding_health,
    gather_with_grad,
    uniformity,
)

E1, E2, E3 = torch.eye(3, dtype=torch.float64)


def naive_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent from SimCLR, one anchor at a time.

    l(i, j) = -log( exp(sim(i, j) / tau) / sum_{k != i} exp(sim(i, k) / tau) ),
    averaged over all 2B anchors, where j is the other view of anchor i's clip
    and sim is cosine similarity.
    """
    views = list(z_a) + list(z_b)
    batch = z_a.shape[0]
    losses = []
    for i, anchor in enumerate(views):
        positive = (i + batch) % (2 * batch)
        numerator = torch.exp(torch.cosine_similarity(anchor, views[positive], dim=0) / temperature)
        denominator = sum(
            torch.exp(torch.cosine_similarity(anchor, other, dim=0) / temperature)
            for k, other in enumerate(views)
            if k != i
        )
        losses.append(-torch.log(numerator / denominator))
    return torch.stack(losses).mean()


def naive_cola(z_a: torch.Tensor, z_b: torch.Tensor, bilinear: torch.Tensor) -> torch.Tensor:
    """COLA loss, one anchor at a time: softmax over s(a_i, b_j) = a_i^T W b_j, target j = i."""
    losses = []
    for i in range(z_a.shape[0]):
        scores = [z_a[i] @ bilinear @ z_b[j] for j in range(z_b.shape[0])]
        log_denominator = torch.logsumexp(torch.stack(scores), dim=0)
        losses.append(log_denominator - scores[i])
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------
# NT-Xent
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch", [2, 5])
def test_ntxent_matches_naive_reference(temperature, batch):
    generator = torch.Generator().manual_seed(batch)
    z_a = torch.randn(batch, 8, generator=generator, dtype=torch.float64)
    z_b = torch.randn(batch, 8, generator=generator, dtype=torch.float64)

    loss = NTXentLoss(temperature=temperature, max_temperature=1.0)(z_a, z_b)
    expected = naive_nt_xent(z_a, z_b, temperature)

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ntxent_gradient_matches_naive():
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)

    NTXentLoss(temperature=0.2)(z_a, z_b).backward()
    grad_a, grad_b = z_a.grad.clone(), z_b.grad.clone()
    z_a.grad, z_b.grad = None, None
    naive_nt_xent(z_a, z_b, 0.2).backward()

    torch.testing.assert_close(grad_a, z_a.grad, rtol=1e-4, atol=1e-6, check_dtype=False)
    torch.testing.assert_close(grad_b, z_b.grad, rtol=1e-4, atol=1e-6, check_dtype=False)


def test_ntxent_hand_computed_identical_views():
    # Views a = (e1, e2), b = (e1, e2), tau = 0.5. Each anchor has cosine 1 with
    # its positive and 0 with the other two candidates, so every anchor's loss is
    # -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.2395447662.
    z = torch.stack([E1, E2])
    loss = NTXentLoss(temperature=0.5)(z, z.clone())
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    assert loss.item() == pytest.approx(0.2395447662, rel=1e-6)


def test_ntxent_hand_computed_swapped_views():
    # Views a = (e1, e2), b = (e2, e1), tau = 1. Anchor a0 = e1 has cosine 0 with
    # its positive b0 = e2, 0 with a1 = e2 and 1 with b1 = e1, so its loss is
    # -log(e^0 / (1 + 1 + e)) = log(2 + e) = 1.5514447139. All anchors are alike.
    z_a = torch.stack([E1, E2])
    z_b = torch.stack([E2, E1])
    loss = NTXentLoss(temperature=1.0)(z_a, z_b)
    assert loss.item() == pytest.approx(math.log(2 + math.e), rel=1e-6)


def test_ntxent_single_pair_is_zero():
    # With B = 1 the positive is the only candidate, so the softmax is 1.
    z_a = torch.tensor([[1.0, 2.0]])
    z_b = torch.tensor([[-3.0, 0.5]])
    assert NTXentLoss()(z_a, z_b).item() == pytest.approx(0.0, abs=1e-6)


def test_ntxent_normalizes_inputs():
    generator = torch.Generator().manual_seed(1)
    z_a = torch.randn(3, 4, generator=generator)
    z_b = torch.randn(3, 4, generator=generator)
    loss_fn = NTXentLoss(temperature=0.3)
    assert loss_fn(5 * z_a, 0.1 * z_b).item() == pytest.approx(loss_fn(z_a, z_b).item(), rel=1e-5)


def test_learnable_temperature_gets_gradient():
    generator = torch.Generator().manual_seed(2)
    loss_fn = NTXentLoss(temperature=0.2, learnable_temperature=True)
    z_a = torch.randn(4, 5, generator=generator)
    z_b = torch.randn(4, 5, generator=generator)

    loss_fn(z_a, z_b).backward()

    assert isinstance(loss_fn.log_temperature, torch.nn.Parameter)
    assert loss_fn.log_temperature.grad is not None
    assert loss_fn.log_temperature.grad.abs().item() > 0


def test_learnable_temperature_is_clamped():
    loss_fn = NTXentLoss(
        temperature=0.2, learnable_temperature=True, min_temperature=0.05, max_temperature=0.5
    )
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(3.0))
    z = torch.randn(3, 4)
    loss_fn(z, z + 0.1)
    assert loss_fn.temperature.item() == pytest.approx(0.5, rel=1e-6)


def test_fixed_temperature_not_a_parameter():
    loss_fn = NTXentLoss(temperature=0.2)
    assert list(loss_fn.parameters()) == []
    assert loss_fn.temperature.item() == pytest.approx(0.2, rel=1e-6)


def test_ntxent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(2, 4))


def test_ntxent_rejects_temperature_outside_bounds():
    with pytest.raises(ValueError, match="outside"):
        NTXentLoss(temperature=2.0, max_temperature=1.0)


def test_gather_without_process_group_is_identity():
    tensor = torch.randn(3, 2)
    assert gather_with_grad(tensor) is tensor


# ---------------------------------------------------------------------------
# COLA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_cola_matches_naive_reference(normalize):
    generator = torch.Generator().manual_seed(3)
    z_a = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    z_b = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    loss_fn = COLALoss(embedding_dim=4, normalize=normalize)
    with torch.no_grad():
        loss_fn.bilinear.copy_(torch.randn(4, 4, generator=generator))

    loss = loss_fn(z_a, z_b)
    if normalize:
        z_a = torch.nn.functional.normalize(z_a, dim=1)
        z_b = torch.nn.functional.normalize(z_b, dim=1)
    expected = naive_cola(z_a, z_b, loss_fn.bilinear.detach().double())

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cola_bilinear_gets_gradient():
    loss_fn = COLALoss(embedding_dim=3)
    loss_fn(torch.randn(4, 3), torch.randn(4, 3)).backward()
    assert loss_fn.bilinear.grad is not None
    assert loss_fn.bilinear.grad.abs().sum().item() > 0


def test_cola_hand_computed():
    # W = I, a = (e1, e2), b = (e1, e2) unnormalised. Anchor a0 scores 1 for b0
    # and 0 for b1, so its loss is -log(e / (e + 1)) = log(1 + 1/e) = 0.3132616875.
    z = torch.stack([E1, E2])
    loss = COLALoss(embedding_dim=3)(z, z.clone())
    assert loss.item() == pytest.approx(math.log(1 + 1 / math.e), rel=1e-6)


def test_cola_rejects_wrong_embedding_dim():
    with pytest.raises(ValueError, match="embedding_dim=4"):
        COLALoss(embedding_dim=4)(torch.randn(2, 3), torch.randn(2, 3))


# ---------------------------------------------------------------------------
# Projection head
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_projection_head_output_shape(norm):
    head = ProjectionHead(input_dim=16, hidden_dim=32, output_dim=8, norm=norm)
    assert head(torch.randn(5, 16)).shape == (5, 8)


def test_projection_head_layer_order():
    head = ProjectionHead(input_dim=4, output_dim=2, norm="batch")
    kinds = [type(layer).__name__ for layer in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_projection_head_rejects_unknown_norm():
    with pytest.raises(ValueError, match="unknown norm"):
        ProjectionHead(input_dim=4, norm="group")


# ---------------------------------------------------------------------------
# Health metrics
# ---------------------------------------------------------------------------


def test_top1_accuracy_all_hits():
    z = torch.eye(3)
    assert contrastive_top1_accuracy(z, z.clone()) == pytest.approx(1.0)


def test_top1_accuracy_hand_built_miss():
    # b2 points almost along e1. Anchors a0, a1, a2, b0 and b1 still rank their
    # positive first (a2 = e3 scores 0.0995 with b2 and 0 with the rest), but b2
    # scores 0.995 with a0 and b0 and only 0.0995 with its positive a2: 5 of 6.
    z_a = torch.stack([E1, E2, E3])
    z_b = torch.stack([E1, E2, E1 + 0.1 * E3])
    assert contrastive_top1_accuracy(z_a, z_b) == pytest.approx(5 / 6)


def test_alignment_hand_computed():
    # Pair 0: e1 vs e2, squared distance 2. Pair 1: e2 vs e2, distance 0.
    z_a = torch.stack([E1, E2])
    z_b = torch.stack([E2, E2])
    assert alignment(z_a, z_b).item() == pytest.approx(1.0, rel=1e-6)
    assert alignment(z_a, z_b, alpha=1).item() == pytest.approx(math.sqrt(2) / 2, rel=1e-6)


def test_uniformity_antipodal_pair():
    # One pair at squared distance 4: log exp(-2 * 4) = -8.
    z = torch.stack([E1, -E1])
    assert uniformity(z).item() == pytest.approx(-8.0, rel=1e-6)


def test_uniformity_three_points():
    # e1, e2, -e1: squared distances 2, 4, 2, so log((2 e^-4 + e^-8) / 3) = -4.3963489672.
    z = torch.stack([E1, E2, -E1])
    assert uniformity(z).item() == pytest.approx(-4.3963489672, rel=1e-6)


def test_uniformity_collapsed_is_zero():
    z = torch.ones(4, 3)
    assert uniformity(z).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_gradient_finite_when_collapsed():
    z = torch.ones(4, 3, requires_grad=True)
    uniformity(z).backward()
    assert torch.isfinite(z.grad).all()


def test_embedding_health_keys_and_values():
    z_a = torch.stack([E1, E2])
    z_b = torch.stack([E2, E2])
    health = embedding_health(z_a, z_b)
    assert set(health) == {"alignment", "uniformity", "contrastive_top1"}
    assert health["alignment"] == pytest.approx(1.0, rel=1e-6)
    # View a: one pair at squared distance 2 gives -4. View b: coincident, 0.
    assert health["uniformity"] == pytest.approx(-2.0, rel=1e-6)
