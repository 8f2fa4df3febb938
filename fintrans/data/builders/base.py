"""The base of fintrans' builders: generated offline, nothing to download or checksum."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import tensorflow_datasets as tfds


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose splits come from `_generate_examples(split)`.

    Subclasses pass skip_registration=True too: fintrans keeps its own registry, so tfds' global one
    can never clash with another dataset of the same name.
    """

    SPLITS = ("train", "validation", "test")
    # tfds 4.9.10 looks for a checksums file next to a packaged builder's code and, on Python >= 3.9,
    # fails importing `importlib_resources` (only a dependency below 3.9); nothing is downloaded here.
    url_infos = None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(split) for split in self.SPLITS}


def packaged_file(package: str, *parts: str, dataset: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package
    (scikit-learn's or arch's import alone takes seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {dataset} dataset needs the `{package}` package installed (it ships the data)")
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)
