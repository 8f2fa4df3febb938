"""Multi-host start: one process per host, joined through jax.distributed."""
from __future__ import annotations

import os
from typing import Optional

import jax


def initialize(enabled: bool, *, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: Optional[str] = None) -> None:
    """Joins the job's processes when `enabled`.

    On TPU pods and SLURM/Open MPI/Kubernetes GPU clusters jax finds the coordinator, process count
    and id on its own. Elsewhere pass them, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. `cpu_collectives` ('gloo') lets CPU processes run cross-process collectives.
    """
    if not enabled:
        return
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                      process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
