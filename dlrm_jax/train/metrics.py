"""Exact evaluation metrics over a whole split: ROC-AUC, log loss, accuracy."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC-AUC (Mann-Whitney U with tied scores counted as one half).

  Args:
    labels: [n] 0/1.
    scores: [n] any monotone score (logits or probabilities).
  Returns:
    AUC in [0, 1]; NaN when a class is absent.
  """
  labels = np.asarray(labels, np.float64).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  positives = labels.sum()
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  # Average ranks (1-based) over runs of tied scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], scores.size]
  avg_rank = (starts + ends + 1) / 2.0
  ranks = np.repeat(avg_rank, ends - starts)
  positive_rank_sum = np.sum(ranks * labels[order])
  return float((positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
  """Mean binary cross-entropy computed from logits (stable for large |logit|)."""
  labels = np.asarray(labels, np.float64)
  logits = np.asarray(logits, np.float64)
  return float(np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))))


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
  """Fraction correct at probability threshold 0.5 (logit 0)."""
  return float(np.mean((np.asarray(logits) > 0) == (np.asarray(labels) > 0.5)))


def evaluate_predictions(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
  return {
    "auc": roc_auc(labels, logits),
    "logloss": log_loss(labels, logits),
    "accuracy": accuracy(labels, logits),
    "num_examples": int(np.size(labels)),
  }
