"""knn_accuracy is the accuracy *at k*: a k above the training set, or training labels of one
class (every vote right), are one-line errors instead of a number that means something else.
knn_predict keeps capping k at N, as its contract (DESIGN.md) and the graded exercise say."""

from __future__ import annotations

import pytest
import torch

from sslkit.errors import SSLKitError
from sslkit.evaluate import knn_accuracy, knn_predict


def features(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def test_k_above_the_training_set_is_an_error_for_the_accuracy():
    train_f, test_f = features(12, 0), features(5, 1)
    train_y, test_y = torch.arange(12) % 3, torch.arange(5) % 3
    assert 0 <= knn_accuracy(train_f, train_y, test_f, test_y, k=12) <= 1
    with pytest.raises(SSLKitError, match="k=13 neighbours but only 12 training") as info:
        knn_accuracy(train_f, train_y, test_f, test_y, k=13)
    assert "k=12 or less" in str(info.value) and "\n" not in str(info.value)
    # the prediction function keeps its documented cap
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=100),
                       knn_predict(train_f, train_y, test_f, k=12))


def test_one_training_class_is_an_error_for_the_accuracy():
    """The kNN monitor reported 1.0 for a one-class image folder."""
    with pytest.raises(SSLKitError, match="at least 2 classes") as info:
        knn_accuracy(features(6, 0), torch.zeros(6, dtype=torch.long), features(3, 1),
                     torch.zeros(3, dtype=torch.long), k=3)
    assert "\n" not in str(info.value)
