"""The device mesh: the only module that names mesh axes.

Every mesh is 2-D, ``(data, model)``. Examples are sharded over both axes (every
device is a data-parallel replica of the MLPs); embedding tables are sharded over
``model`` and replicated over ``data``. The paper's 1-D hybrid-parallel layout is
the mesh ``(1, N)``: every device both trains the MLPs on its slice of the batch
and owns some tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
# The batch dimension is split over every device, data-major.
BATCH_AXES = (DATA_AXIS, MODEL_AXIS)


def parse_mesh_shape(text: str) -> tuple[int, ...]:
  """'' -> (), '8' -> (8,), '2,4' -> (2, 4). Raises ValueError naming the flag."""
  text = text.strip()
  if not text:
    return ()
  try:
    shape = tuple(int(p) for p in text.split(","))
  except ValueError:
    raise ValueError(f"--mesh_shape={text!r}: expected N or DATA,MODEL, e.g. 8 or 2,4") from None
  if len(shape) > 2 or any(s < 1 for s in shape):
    raise ValueError(f"--mesh_shape={text!r}: expected one or two positive sizes, e.g. 8 or 2,4")
  return shape


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int]:
  """Maps a user shape to (data, model); () means every device in the 1-D layout."""
  if not shape:
    resolved = (1, num_devices)
  elif len(shape) == 1:
    resolved = (1, shape[0])
  else:
    resolved = (shape[0], shape[1])
  if resolved[0] * resolved[1] != num_devices:
    raise ValueError(
      f"--mesh_shape={','.join(map(str, shape))} needs {resolved[0] * resolved[1]} devices "
      f"but {num_devices} are available (jax.device_count())"
    )
  return resolved


def make_mesh(shape: Sequence[int] = (), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over ``devices`` (default: all devices of all processes)."""
  devices = list(devices if devices is not None else jax.devices())
  data, model = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(
    (data, model),
    (DATA_AXIS, MODEL_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=devices,
  )


def model_size(mesh: Mesh) -> int:
  return mesh.shape[MODEL_AXIS]


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS] * mesh.shape[MODEL_AXIS]


def batch_spec() -> P:
  return P(BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec())


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
