"""Exact AUC against a brute-force pairwise reference, log loss and accuracy."""

import numpy as np
import pytest

from dlrm_jax.train.metrics import accuracy, log_loss, roc_auc


def brute_force_auc(labels, scores):
  pos = scores[labels == 1]
  neg = scores[labels == 0]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_reference_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 500)
  scores = np.round(rng.normal(size=500) + labels * 0.5, 1)  # rounding makes many ties
  assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_extremes():
  assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
  assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
  assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
  assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_log_loss_and_accuracy_from_logits():
  labels = np.array([1.0, 0.0, 1.0])
  logits = np.array([2.0, -1.0, -0.5])
  p = 1 / (1 + np.exp(-logits))
  want = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  assert log_loss(labels, logits) == pytest.approx(want, rel=1e-12)
  assert accuracy(labels, logits) == pytest.approx(2 / 3)
  assert np.isfinite(log_loss(np.array([1.0]), np.array([-1000.0])))
