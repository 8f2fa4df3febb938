"""Executes every notebooks/*.ipynb top to bottom, the way a researcher would run it.

Each notebook runs in a fresh python3 kernel (this interpreter's environment) with notebooks/ as its
working directory, JAX_PLATFORMS=cpu and a temporary $FINTRANS_DATA_DIR and $TMPDIR, so datasets are
built fresh and nothing is written outside the test's directory. A failing cell fails the test with
that cell's source and traceback, and every cell that draws with pyplot must display a PNG: a
notebook that silently stops plotting (say, after something switched matplotlib's backend) fails.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import nbclient
import nbformat
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
# A cell that draws: pyplot calls, or the object-oriented calls made on figures and axes.
_DRAWS = re.compile(r"\bplt\.(show|plot|subplots|figure|imshow|scatter|hist|bar)\(")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """The kernel inherits this process's environment."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # libtpu is installed (AOT compiles); keep it off the backend
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("FINTRANS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # notebooks' tempfile workdirs land in the test's directory
    # Run as a researcher would: no XLA flags (forced device counts, optimisation levels) from the test
    # session, and matplotlib picks its backend as in Jupyter.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return tmp_path


def execute(path: Path, cwd: Path = NOTEBOOK_DIR):
    """Runs the notebook at `path` in `cwd`; returns the executed copy or fails with the cell's error."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError as e:  # its message holds the failing cell's source and traceback
        pytest.fail(f"{path.name}: a cell failed:\n{e}", pytrace=False)
    return nb


def missing_figures(nb) -> list[str]:
    """The drawing cells of an executed notebook that displayed no PNG image."""
    missing = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not _DRAWS.search(cell.source):
            continue
        images = [out for out in cell.get("outputs", ()) if out.output_type in ("display_data", "execute_result")
                  and "image/png" in out.get("data", {})]
        if not images:
            first_line = cell.source.strip().splitlines()[0]
            missing.append(f"cell {i} ({first_line!r}...)")
    return missing


def test_found_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, kernel_env):
    committed = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(committed.cells) if c.cell_type == "code"
                    and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not with_outputs, (f"{path.name} is committed with outputs in cells {with_outputs}; clear them "
                              "(Jupyter: Edit > Clear Outputs of All Cells) so its diffs stay readable")
    nb = execute(path)
    missing = missing_figures(nb)
    assert not missing, (f"{path.name}: these cells draw but displayed no figure: {missing}. Is a cell no longer "
                         "plotting, or did something switch matplotlib away from the inline backend?")


# -- the harness itself: a failing cell and a lost figure are reported --------------------------------
def _write(tmp_path, *sources) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def test_harness_reports_a_failing_cell(kernel_env):
    path = _write(kernel_env, "x = 1", "y = x + 1\nraise ValueError(f'boom from the probe, y={y}')")
    with pytest.raises(pytest.fail.Exception) as failed:
        execute(path, cwd=kernel_env)
    message = str(failed.value)
    assert "boom from the probe, y=2" in message and "y = x + 1" in message, message


def test_harness_reports_a_lost_figure(kernel_env):
    path = _write(kernel_env, "%matplotlib inline\nimport matplotlib.pyplot as plt",
                  "fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()",
                  "import matplotlib\nmatplotlib.use('Agg')  # what a library must never do to a notebook",
                  "fig, ax = plt.subplots()\nax.plot([2, 1])\nplt.show()")
    missing = missing_figures(execute(path, cwd=kernel_env))
    assert len(missing) == 1 and missing[0].startswith("cell 3 "), missing
