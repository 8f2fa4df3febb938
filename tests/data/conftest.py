"""One temporary data_dir per test session, with every dataset prepared once (seconds)."""
import pytest

import fintrans.data as fd

SMALL_CONFIGS = {
    "chars": {"name": "chars", "seq_len": 32},
    "digits": {"name": "digits"},
    "sp500": {"name": "sp500", "input_len": 48, "horizon": 12},
    "finai_sentences": {"name": "finai_sentences", "max_len": 40},
    "stocks": {"name": "stocks", "input_len": 48, "horizon": 12, "target": 0, "min_corr_pct": 0},
    "seattle_weather": {"name": "seattle_weather", "input_len": 48, "horizon": 12},
    "basic_motions": {"name": "basic_motions"},
    "japanese_vowels": {"name": "japanese_vowels"},
    "arrow_head": {"name": "arrow_head"},
    "osu_leaf": {"name": "osu_leaf"},
    "synthetic_scenes": {"name": "synthetic_scenes", "max_points": 4096},
    "patient_visits": {"name": "patient_visits", "gsp": 0},
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    for name in fd.names():
        fd.prepare_dataset(name, path)
    return path


@pytest.fixture(scope="session")
def load(data_dir):
    """load(name, **overrides) -> Dataset from the session data_dir, never building anything."""
    def _load(name, **overrides):
        return fd.load({**SMALL_CONFIGS[name], "data_dir": str(data_dir), "prepare": False, **overrides})
    return _load
