"""--mode=export: the scoring function as a serialized jax.export artifact, weights and a loader."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.checkpoint import table_io
from dlrm_jax.config import Config
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.run import export_loader, managed_serving
from dlrm_jax.run.inference import load

PLATFORMS = ("cpu", "cuda")


def serving_function(
  model: DenseModel, params_treedef, num_params: int, hash_rows=None, managed: bool = False
):
  """``f(weights, dense f32[b, 13], sparse i32[b, T]) -> probabilities f32[b]``.

  ``weights`` is the flat list: the dense parameters, then one f32[rows, dim]
  table per feature. A plain single-device lookup: serving needs no mesh.
  ``hash_rows`` (--id_mapping=hash): sparse is u32[b, T] raw values, row = value % rows[t],
  as training computed it on the host. ``managed`` (--id_mapping=managed): sparse is u32[b, T]
  raw values, and ``weights`` go on with each table's ids u32[n_t] held (ascending), then
  their rows i32[n_t] (``managed_serving.resident_ids``): an id not held takes row 0, the
  unknown row, as evaluation and --mode=predict do.
  """

  def f(weights, dense, sparse):
    params = jax.tree.unflatten(params_treedef, weights[:num_params])
    tables = weights[num_params:]
    if hash_rows is not None:
      sparse = (sparse % jnp.asarray(hash_rows, jnp.uint32)[None, :]).astype(jnp.int32)
    if managed:
      t = sparse.shape[1]
      tables, ids, rows = tables[:t], tables[t : 2 * t], tables[2 * t :]
      sparse = jnp.stack(
        [managed_serving.find_rows(ids[i], rows[i], sparse[:, i]) for i in range(t)], axis=1
      )
    emb = jnp.stack([jnp.take(t, sparse[:, i], axis=0) for i, t in enumerate(tables)], axis=1)
    return jax.nn.sigmoid(model.apply({"params": params}, dense, emb))

  return f


def _export(fn, args) -> Any:
  try:
    return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
  except Exception as e:  # a jaxlib that cannot lower for CUDA: CPU only
    logging.warning("export for %s failed (%s); exporting for cpu only", PLATFORMS, e)
    return jax.export.export(jax.jit(fn), platforms=("cpu",))(*args)


def _write_weights(path: str, arrays) -> int:
  """Streams arrays into an .npz one at a time (at most one table on the host)."""
  tmp = path + ".tmp"
  count = 0
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
    for arr in arrays:
      with z.open(f"w{count:05d}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(jax.device_get(arr)), allow_pickle=False)
      count += 1
  os.replace(tmp, path)
  return count


def run_export(config: Config) -> dict[str, Any]:
  """Writes --export_dir (default workdir/export) from --checkpoint."""
  m = load(config)
  c = m.components
  out = config.export_dir or os.path.join(config.workdir, "export")
  os.makedirs(out, exist_ok=True)
  abstract = jax.eval_shape(lambda s: s, m.state)
  tree, finite = checkpointing.make_snapshot(c.layout, abstract, c.mesh, config.seed)(m.state)
  if not bool(finite):
    raise checkpointing.CheckpointError(f"{m.checkpoint}: non-finite values; not exported")
  params_leaves, treedef = jax.tree.flatten(tree["params"])
  names = [p.spec.name for p in c.layout.placements]
  tables = table_io.logical_tables(c.layout, m.state.tables, c.mesh)
  weights = params_leaves + tables
  managed = c.managed is not None
  if managed:
    held = managed_serving.resident_ids(c.managed, m.state.managed)
    weights += [ids for ids, _ in held] + [rows for _, rows in held]
  b = jax.export.symbolic_shape("b")
  raw = config.raw_ids
  args = (
    [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
    jax.ShapeDtypeStruct((b[0], 13), jnp.float32),
    jax.ShapeDtypeStruct((b[0], len(names)), jnp.uint32 if raw else jnp.int32),
  )
  hash_rows = list(c.table_sizes) if config.id_mapping == "hash" else None
  exported = _export(
    serving_function(c.model, treedef, len(params_leaves), hash_rows, managed), args
  )
  if jax.process_index() != 0:
    return {"export_dir": out}
  with open(os.path.join(out, export_loader.FUNCTION), "wb") as f:
    f.write(exported.serialize())
  num = _write_weights(os.path.join(out, export_loader.WEIGHTS), weights)
  signature = {
    "format": "dlrm_jax/export/1",
    "num_dense": 13,
    "num_weights": num,
    "table_names": names,
    "table_sizes": list(c.table_sizes),
    "id_mapping": config.id_mapping,
    "embedding_dim": c.config.embedding_dim,
    "checkpoint": m.checkpoint,
    "platforms": list(exported.platforms),
    "inputs": (
      f"dense f32[N, 13], sparse u32[N, {len(names)}] raw values (row = value % table size)"
      if hash_rows
      else f"dense f32[N, 13], sparse u32[N, {len(names)}] raw values (row: the trained map's; "
      f"row 0 for a value it does not hold)"
      if managed
      else f"dense f32[N, 13], sparse i32[N, {len(names)}] (preprocessed ids)"
    ),
    "output": "click probability f32[N]",
  }
  with open(os.path.join(out, export_loader.SIGNATURE), "w") as f:
    json.dump(signature, f, indent=2)
  shutil.copyfile(export_loader.__file__, os.path.join(out, "dlrm_loader.py"))
  return {"export_dir": out, "checkpoint": m.checkpoint, "platforms": list(exported.platforms)}
