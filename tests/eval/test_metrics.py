"""Accuracy, confusion matrix and speed of `sgformer.eval.metrics`."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sgformer.accuracy import accuracy_from_sums, classification_sums
from sgformer.eval.metrics import classification_metrics, measure_speed, predict


def test_sums_add_over_batches_to_the_whole_set_metrics():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 7), torch.randint(0, 7, (10,))
    whole = classification_metrics(logits, labels)
    parts = classification_sums(logits[:4], labels[:4]) + classification_sums(logits[4:], labels[4:])
    summed = accuracy_from_sums(parts)
    assert summed == pytest.approx({k: whole[k] for k in ('top1', 'top5', 'loss')})


def test_metrics_of_known_predictions():
    # 3 classes; rows are images: true labels 0, 0, 1, 2, 2 predicted 0, 1, 1, 2, 0
    labels = torch.tensor([0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0])
    logits = F.one_hot(predicted, 3).float() * 5 + torch.tensor([0.0, 0.1, 0.2])
    scores = classification_metrics(logits, labels)
    assert scores['top1'] == pytest.approx(3 / 5)
    assert scores['top5'] == 1.0  # 3 classes: the top 3 always hold the label
    assert scores['confusion'].tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert scores['per_class_top1'] == pytest.approx([0.5, 1.0, 0.5])
    assert scores['loss'] == pytest.approx(F.cross_entropy(logits, labels).item())


def test_class_without_images_has_nan_accuracy():
    scores = classification_metrics(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert scores['per_class_top1'][0] == 1.0 and math.isnan(scores['per_class_top1'][2])


def test_predict_concatenates_batches_in_order():
    model = nn.Linear(4, 2)
    batches = [(torch.randn(3, 4), torch.tensor([0, 1, 0])), (torch.randn(2, 4), torch.tensor([1, 1]))]
    logits, labels = predict(model, batches)
    assert labels.tolist() == [0, 1, 0, 1, 1]
    assert torch.allclose(logits, model(torch.cat([b[0] for b in batches])))


def test_speed_is_positive_and_consistent():
    speed = measure_speed(nn.Conv2d(3, 4, 3), batch_size=4, img_size=32, steps=3)
    assert speed['img_s'] > 0 and speed['img_s'] == pytest.approx(4 / (speed['latency_ms'] / 1000))
