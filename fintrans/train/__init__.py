"""The one trainer for every model and task."""
from fintrans.train.checkpoint import CheckpointUnreadableError
from fintrans.train.config import default_config, validate
from fintrans.train.loop import NonFiniteLossError, Trainer, build_model, evaluate_params, train_and_evaluate
from fintrans.train.metrics import read_metrics

__all__ = ["CheckpointUnreadableError", "NonFiniteLossError", "Trainer", "build_model", "default_config",
           "evaluate_params", "read_metrics", "train_and_evaluate", "validate"]
