"""The training state: everything a checkpoint must hold to resume exactly."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # Every non-params collection the model's init returns (BatchNorm "batch_stats", ...): updated by
    # train steps, used as-is by evaluation. {} for models without state.
    model_state: Any = flax.struct.field(default_factory=dict)
    # With config.ema_decay > 0: the exponential moving average of params, used for evaluation; else None.
    ema_params: Any = None

    @property
    def eval_params(self) -> Any:
        """The parameters evaluation uses: the EMA when there is one."""
        return self.params if self.ema_params is None else self.ema_params
