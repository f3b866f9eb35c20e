"""Tests of the training losses against hand-computed values on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError, LabelError
from emomix.models import blocks
from emomix.models.losses import (
    branch_losses,
    focal_loss,
    inverse_frequency_alpha,
    kl_to_gate,
    load_balance_loss,
    routing_entropy_loss,
    supervised_contrastive_loss,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------- focal loss


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    logits, targets = torch.randn(7, 4), torch.tensor([0, 1, 2, 3, 1, -100, 2])
    alpha = torch.tensor([0.5, 2.0, 1.0, 3.0])
    expected = F.cross_entropy(logits, targets, weight=alpha, ignore_index=-100)
    assert torch.allclose(focal_loss(logits, targets, alpha, gamma=0.0), expected, atol=1e-6)
    assert torch.allclose(focal_loss(logits, targets, None, gamma=0.0), F.cross_entropy(logits, targets), atol=1e-6)
    expected_sum = F.cross_entropy(logits, targets, weight=alpha, reduction="sum")
    assert torch.allclose(focal_loss(logits, targets, alpha, gamma=0.0, reduction="sum"), expected_sum, atol=1e-6)


def test_focal_with_gamma_two_by_hand():
    # both rows have p = (1/4, 3/4); row 0 is class 0 (p_t = 1/4), row 1 is class 1 (p_t = 3/4)
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    targets = torch.tensor([0, 1])
    alpha = torch.tensor([2.0, 1.0])
    row0 = 2.0 * 0.75**2 * math.log(4)
    row1 = 1.0 * 0.25**2 * -math.log(0.75)
    per_row = focal_loss(logits, targets, alpha, gamma=2.0, reduction="none")
    assert per_row.tolist() == pytest.approx([row0, row1], rel=1e-5)
    assert float(focal_loss(logits, targets, alpha, gamma=2.0)) == pytest.approx((row0 + row1) / 3.0, rel=1e-5)
    assert float(focal_loss(logits, targets, None, gamma=2.0)) == pytest.approx((row0 / 2 + row1) / 2, rel=1e-5)


def test_focal_down_weights_easy_examples():
    logits, targets = torch.tensor([[4.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1])
    per_row_ce = focal_loss(logits, targets, gamma=0.0, reduction="none")
    per_row_focal = focal_loss(logits, targets, gamma=2.0, reduction="none")
    assert (per_row_focal < per_row_ce).all()
    assert per_row_focal[0] / per_row_ce[0] < per_row_focal[1] / per_row_ce[1]


def test_focal_ignores_padding_targets_in_dialogue_batches():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.tensor([[1, 2, -100], [0, -100, -100]])
    loss = focal_loss(logits, targets, torch.ones(4))
    changed = logits.detach().clone()
    changed[0, 2] = 100.0
    changed[1, 1:] = -50.0
    assert torch.allclose(loss, focal_loss(changed, targets, torch.ones(4)))
    per_row = focal_loss(logits, targets, reduction="none")
    assert per_row.shape == (2, 3) and per_row[0, 2] == 0 and per_row[1, 1] == 0
    loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0


def test_focal_with_only_ignored_targets_is_zero_not_nan():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = focal_loss(logits, torch.full((3,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_rejects_wrong_alpha_and_reduction():
    with pytest.raises(ConfigError, match="one weight per class"):
        focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.ones(4))
    with pytest.raises(ConfigError, match="reduction"):
        focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg")


# --------------------------------------------------------------------------------- class weights


def test_inverse_frequency_alpha_on_known_counts():
    labels = [0, 0, 1, 2, 2, 2, -100]  # counts 2, 1, 3 of 6 labelled rows
    raw = inverse_frequency_alpha(labels, 3, normalise=False)
    assert raw.tolist() == pytest.approx([1 / 2, 1.0, 1 / 3])
    balanced = inverse_frequency_alpha(torch.tensor(labels), 3)
    assert balanced.tolist() == pytest.approx([1.0, 2.0, 2 / 3])
    # the mean weight over the labelled rows is 1
    assert float(balanced[torch.tensor(labels[:-1])].mean()) == pytest.approx(1.0)


def test_inverse_frequency_alpha_absent_class_and_bad_labels():
    alpha = inverse_frequency_alpha(np.array([0, 0, 2, 2]), 4)
    assert alpha.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])
    with pytest.raises(LabelError, match="label 5 is outside 0..3"):
        inverse_frequency_alpha([0, 5], 4)
    with pytest.raises(LabelError, match="no labelled rows"):
        inverse_frequency_alpha([-100, -100], 4)


# --------------------------------------------------------------------------------- routing


def test_routing_entropy_of_uniform_and_one_hot_routers():
    assert float(routing_entropy_loss(torch.full((5, 2), 0.5))) == pytest.approx(-math.log(2))
    assert float(routing_entropy_loss(torch.full((5, 4), 0.25))) == pytest.approx(-math.log(4))
    assert float(routing_entropy_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))) == pytest.approx(0.0, abs=1e-6)
    mixed = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert float(routing_entropy_loss(mixed)) == pytest.approx(-math.log(2) / 2)
    assert float(routing_entropy_loss(mixed, mask=torch.tensor([True, False]))) == pytest.approx(-math.log(2))


def test_routing_entropy_gradient_pushes_towards_uniform():
    logits = torch.tensor([[2.0, -1.0]], requires_grad=True)
    routing_entropy_loss(torch.softmax(logits, -1)).backward()
    # descending the loss lowers the larger logit and raises the smaller one
    assert logits.grad[0, 0] > 0 > logits.grad[0, 1]


def test_load_balance_loss_is_reexported_from_blocks():
    assert load_balance_loss is blocks.load_balance_loss


# --------------------------------------------------------------------------------- branch losses


def test_branch_losses_sum_cross_entropies_and_ignore_padding():
    targets = torch.tensor([0, 2, -100, 1])
    branches = [torch.randn(4, 3) for _ in range(3)]
    expected = sum(F.cross_entropy(b, targets, ignore_index=-100) for b in branches)
    assert torch.allclose(branch_losses(branches, targets), expected, atol=1e-6)
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected_weighted = sum(F.cross_entropy(b, targets, weight=weight) for b in branches)
    assert torch.allclose(branch_losses(branches, targets, weight), expected_weighted, atol=1e-6)
    assert float(branch_losses(branches, torch.full((4,), -100))) == 0.0


# --------------------------------------------------------------------------------- contrastive


def test_supervised_contrastive_by_hand():
    # two orthogonal pairs with different labels, temperature 1: similarity is the identity
    a = torch.eye(2)
    loss = supervised_contrastive_loss(a, a.clone(), torch.tensor([0, 1]), temperature=1.0)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    # same label: both candidates are positives, the loss is the mean of both -log softmax terms
    same = supervised_contrastive_loss(a, a.clone(), torch.tensor([3, 3]), temperature=1.0)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert float(same) == pytest.approx(expected, rel=1e-5)


def test_supervised_contrastive_lower_when_pairs_align():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    prototypes = F.normalize(torch.randn(4, 16), dim=-1)
    speech = prototypes[labels] + 0.05 * torch.randn(8, 16)
    text = prototypes[labels] + 0.05 * torch.randn(8, 16)
    aligned = supervised_contrastive_loss(speech, text, labels)
    shuffled = supervised_contrastive_loss(speech, text[torch.tensor([2, 4, 6, 0, 7, 1, 3, 5])], labels)
    assert float(aligned) < float(shuffled) - 1.0


def test_supervised_contrastive_ignores_unlabelled_rows():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    labels = torch.tensor([0, 1, -100, 0, -100])
    loss = supervised_contrastive_loss(a, b, labels)
    keep = labels != -100
    assert torch.allclose(loss, supervised_contrastive_loss(a[keep], b[keep], labels[keep]), atol=1e-6)
    dialogue = supervised_contrastive_loss(a.reshape(1, 5, 8), b.reshape(1, 5, 8), labels.reshape(1, 5))
    assert torch.allclose(loss, dialogue, atol=1e-6)


# --------------------------------------------------------------------------------- KL to the gate


def test_kl_to_gate_zero_when_experts_agree_and_by_hand_otherwise():
    gate = torch.softmax(torch.randn(4, 3), -1)
    assert float(kl_to_gate([gate.clone(), gate.clone()], gate)) == pytest.approx(0.0, abs=1e-6)
    half, skewed = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kl_to_gate([skewed], half)) == pytest.approx(expected, rel=1e-5)
    assert float(kl_to_gate([skewed, half], half)) == pytest.approx(expected / 2, rel=1e-5)


def test_kl_to_gate_mask_leaves_out_padded_rows():
    gate = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    expert = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    assert float(kl_to_gate([expert], gate, mask=torch.tensor([True, False]))) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_gate([expert], gate)) > 0.5
    labels = torch.tensor([[2, -100]])
    assert float(kl_to_gate([expert.reshape(1, 2, 2)], gate.reshape(1, 2, 2), mask=labels != -100)) == pytest.approx(
        0.0, abs=1e-6
    )


def test_multiclass_hinge_matches_its_definition_and_weights_rows():
    from emomix.models.losses import multiclass_hinge

    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.2, 0.1], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 2, 1])

    def by_hand(row, y, p):
        terms = [max(0.0, 1.0 - float(row[y]) + float(row[j])) ** p for j in range(3) if j != y]
        return sum(terms) / 3

    plain = [by_hand(scores[i], int(labels[i]), 1) for i in range(3)]
    squared = [by_hand(scores[i], int(labels[i]), 2) for i in range(3)]
    assert float(multiclass_hinge(scores, labels, squared=False)) == pytest.approx(sum(plain) / 3)
    assert float(multiclass_hinge(scores, labels)) == pytest.approx(sum(squared) / 3)
    # a correct row beyond the margin costs nothing
    assert squared[0] == pytest.approx(0.0)
    weight = torch.tensor([1.0, 3.0, 0.5])
    expected = (squared[0] * 1.0 + squared[1] * 0.5 + squared[2] * 3.0) / (1.0 + 0.5 + 3.0)
    assert float(multiclass_hinge(scores, labels, weight=weight)) == pytest.approx(expected)
    # ignored rows (padding in dialogue batches) are left out; all ignored gives a zero with a graph
    assert float(multiclass_hinge(scores, torch.tensor([0, -100, -100]))) == pytest.approx(squared[0])
    empty = multiclass_hinge(scores.requires_grad_(), torch.full((3,), -100))
    assert float(empty) == 0.0 and empty.requires_grad
