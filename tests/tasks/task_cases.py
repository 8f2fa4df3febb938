"""A stand-in for the trainer's run object that Task.sample receives (config, first_batch, predict)."""
from types import SimpleNamespace

import numpy as np


class FakeRun:
    """first_batch returns `batch`; predict applies `model(params, batch)` as the trainer's predict would
    (outputs and the batch, as numpy)."""

    def __init__(self, model, batch, num_examples=3):
        self.model_fn, self.batch = model, batch
        self.config = SimpleNamespace(sample=SimpleNamespace(num_examples=num_examples))
        self.is_main = True
        self.predict_calls = 0

    def first_batch(self, split):
        assert split == "test"
        return dict(self.batch)

    def predict(self, params, batch):
        self.predict_calls += 1
        out = self.model_fn(params, batch)
        convert = lambda x: {k: np.asarray(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)
        return convert(out), {k: np.asarray(v) for k, v in batch.items()}
