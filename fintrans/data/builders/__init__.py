"""One module per dataset: its tfds builder and the reader from its records to pipeline sources.

Each module registers its DatasetSpec in DATASETS (fintrans.registry's style); the modules are imported
on the first lookup.
"""
from fintrans.data.errors import DataConfigError
from fintrans.registry import Registry

DATASETS = Registry("dataset", load=tuple(f"fintrans.data.builders.{m}" for m in (
    "chars", "digits", "sp500", "finai_sentences", "synthetic_scenes", "stocks", "seattle_weather", "uea",
    "patient_visits", "synthetic_events")), error=DataConfigError)


def register(spec):
    """Registers a DatasetSpec under its name; returns it."""
    return DATASETS.register(spec.name, spec)
