"""The training loss: class weights and label smoothing work alone and together."""

import pytest
import torch

from species_classifier.train.loss import ClassWeightedCrossEntropy


def _batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 2, 3, 3, 3])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_without_weights_matches_torch(smoothing):
    logits, labels = _batch()
    ours = ClassWeightedCrossEntropy(None, smoothing)(logits, labels)
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing))


def test_weights_without_smoothing_match_torch():
    logits, labels = _batch()
    weight = torch.tensor([2.0, 1.0, 0.5, 0.25])
    ours = ClassWeightedCrossEntropy(weight)(logits, labels)
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, labels, weight=weight))


def test_smoothing_term_is_not_class_weighted():
    logits, labels = _batch()
    weight = torch.tensor([4.0, 4.0, 4.0, 0.1])
    per_photo = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2, reduction="none")
    expected = (per_photo * weight[labels]).sum() / weight[labels].sum()
    torch.testing.assert_close(ClassWeightedCrossEntropy(weight, 0.2)(logits, labels), expected)


def test_confident_right_prediction_lowest_loss():
    # With smoothing, a confident right prediction has the lowest loss whatever the class weights.
    # Torch's weighted smoothing would instead favour the heavily weighted classes.
    labels = torch.tensor([3, 3])
    weight = torch.tensor([5.0, 5.0, 5.0, 0.2])
    loss = ClassWeightedCrossEntropy(weight, 0.1)
    right = loss(torch.tensor([[0.0, 0.0, 0.0, 4.0]] * 2), labels)
    pulled_to_heavy_classes = loss(torch.tensor([[2.0, 2.0, 2.0, 4.0]] * 2), labels)
    assert right < pulled_to_heavy_classes
