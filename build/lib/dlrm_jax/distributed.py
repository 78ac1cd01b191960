"""Multi-process start-up: one JAX process per host (or several on one machine)."""

from __future__ import annotations

import os

import jax


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Calls jax.distributed.initialize when several processes are asked for.

  Flags win; otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID (or a cluster JAX auto-detects) are used. Must run before
  anything touches jax devices. On CPU, cross-process collectives use gloo.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
  if num_processes <= 1 and not coordinator_address:
    return
  if not coordinator_address or process_id < 0:
    raise ValueError(
      "multi-process runs need --coordinator_address, --num_processes and "
      "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
