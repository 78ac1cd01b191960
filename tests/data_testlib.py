"""Checks shared by the data tests: a preprocessed directory against the slow reference's arrays."""

from __future__ import annotations

import numpy as np

from dlrm_jax.data.store import open_split, read_metadata


def assert_matches(out: str, expected) -> None:
  """``expected``: (arrays by split, table sizes), as criteo_reference.encode returns them."""
  arrays, sizes = expected
  assert read_metadata(out)["table_sizes"] == sizes
  for split, (dense, sparse, label) in arrays.items():
    got = open_split(out, split)
    np.testing.assert_array_equal(got.label, label)
    np.testing.assert_array_equal(got.sparse, sparse)
    np.testing.assert_allclose(got.dense, dense, rtol=2e-7, atol=0)
