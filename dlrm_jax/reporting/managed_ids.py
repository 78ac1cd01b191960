"""--id_mapping=managed counters per table in metrics.jsonl, TensorBoard and a one-line summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.sharding.managed import COUNTERS

# metrics.jsonl keys: each maps table name -> count, plus "total" (TensorBoard: train/<key>/<name>).
KEYS = ("managed_occupancy",) + tuple(f"managed_{name}" for name in COUNTERS)
SHOWN_TABLES = 3  # the summary line names the fullest few tables, not all 26


def counter_fetcher(mesh: Mesh) -> Callable[[dict[str, jax.Array]], dict[str, np.ndarray]]:
  """``fetch(state.managed)``: the run's counters per table, i64[T] each ([model, T] summed).

  The sum comes back replicated, so every process can read it (the counters are
  split over ``model``, and another process may hold some of the shards).
  """
  total = jax.jit(
    lambda c: jax.tree.map(lambda x: x.sum(axis=0), c), out_shardings=NamedSharding(mesh, P())
  )

  def fetch(managed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    summed = total({name: managed[name] for name in COUNTERS})
    return {name: np.asarray(x, np.int64) for name, x in summed.items()}

  return fetch


def counter_record(
  counters: dict[str, np.ndarray], names: Sequence[str]
) -> dict[str, dict[str, int]]:
  """The training line's managed fields: per table and in total, occupancy (ids held: inserted -
  evicted), insertions, evictions and unplaced ids (new ids that found no row, served row 0)."""
  per_table = {"managed_occupancy": counters["inserted"] - counters["evicted"]}
  per_table.update({f"managed_{name}": counters[name] for name in COUNTERS})
  return {
    key: {**{n: int(v) for n, v in zip(names, values, strict=True)}, "total": int(values.sum())}
    for key, values in per_table.items()
  }


def summary(step: int, record: dict[str, dict[str, int]], capacity: dict[str, int]) -> str:
  """One log line: ids held of the capacity, the counters' totals, and the fullest tables."""
  held = record["managed_occupancy"]
  total = sum(capacity.values())
  fullest = sorted(capacity, key=lambda n: (-held[n] / capacity[n], list(capacity).index(n)))
  tables = ", ".join(f"{n} {held[n]:,}/{capacity[n]:,}" for n in fullest[:SHOWN_TABLES])
  return (
    f"step {step} managed ids: {held['total']:,} held of {total:,} "
    f"({100 * held['total'] / total:.1f}%); inserted {record['managed_inserted']['total']:,}, "
    f"evicted {record['managed_evicted']['total']:,}, unplaced "
    f"{record['managed_unplaced']['total']:,}; fullest: {tables}"
  )
