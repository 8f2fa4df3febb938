"""Shared by the parallel tests: one data_dir with the chars dataset, prepared once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chars_data_dir(tmp_path_factory) -> Path:
    """The chars dataset, built once here so that subprocesses only ever read it."""
    import fintrans.data as fd

    path = tmp_path_factory.mktemp("parallel_tfds")
    fd.prepare_dataset("chars", path)
    return path
