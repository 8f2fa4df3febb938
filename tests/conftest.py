"""Test-wide setup: CPU only, and datasets built into a fresh directory per test session (worker)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu is installed for AOT tests; it must not grab the backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compiling dominates CPU test time: reuse compiled programs across tests, workers and subprocesses
# (tests that retrain the same tiny model hit the cache).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_REPO, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def hermetic_data_dir(tmp_path_factory):
    """Datasets are built from the wheels' embedded data into a per-session directory, so tests
    neither depend on nor write to the user's ~/.cache/fintrans. Subprocesses inherit it."""
    previous = os.environ.get("FINTRANS_DATA_DIR")
    path = tmp_path_factory.mktemp("tfds")
    os.environ["FINTRANS_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FINTRANS_DATA_DIR", None)
    else:
        os.environ["FINTRANS_DATA_DIR"] = previous


# Modules whose tests train, compile for TPUs, start processes or execute notebooks: `make test-fast`
# (pytest -m "not slow") leaves them out for a quick inner loop; `make test` runs everything. A single
# slow test elsewhere carries @pytest.mark.slow itself.
SLOW_MODULES = (
    "tests/notebooks/",
    "tests/experiments/",
    "tests/parallel/",
    "tests/train/",
)


def pytest_collection_modifyitems(config, items):
    """Marks the slow modules' tests `slow`; gpu_only / tpu_only tests run only where jax's default
    backend is that hardware."""
    for item in items:
        path = os.path.relpath(str(item.fspath), _REPO).replace(os.sep, "/")
        if path.startswith(SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
    needs = {"gpu_only": "gpu", "tpu_only": "tpu"}
    marked = [(item, needs[m]) for item in items for m in needs if item.get_closest_marker(m)]
    if not marked:
        return
    import jax  # only now: collection may run before any test has chosen its environment
    backend = jax.default_backend()
    for item, platform in marked:
        if platform != backend:
            item.add_marker(pytest.mark.skip(reason=f"needs a {platform.upper()}; this run has {backend}"))
