"""Fitted artefacts (cached once beside the dataset, safe across processes), ShapeFormer's shapelets
fitted at load time, and concurrent first use of an unbuilt dataset by two processes."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fintrans.data as fd
from fintrans.data import fitted, shapelets
from fintrans.data.builders import uea

ROOT = Path(__file__).resolve().parents[2]


def test_cache_computes_once_and_keys_on_params(tmp_path):
    calls = []
    cache = fitted.FittedCache(tmp_path)

    def compute():
        calls.append(1)
        return {"values": np.arange(3, dtype=np.float32), "name": "x", "gain": np.float64(0.5)}

    first = cache.get("stats", {"k": 2}, compute)
    assert first == {"values": [0.0, 1.0, 2.0], "name": "x", "gain": 0.5} and len(calls) == 1
    assert fitted.FittedCache(tmp_path).get("stats", {"k": np.int64(2)}, compute) == first and len(calls) == 1
    cache.get("stats", {"k": 3}, compute)  # other params: another artefact
    assert len(calls) == 2 and len(list((tmp_path / fitted.FITTED_DIR).glob("stats-*.json"))) == 2
    path = cache.path("stats", {"k": 2})
    path.write_text("{truncated")  # a damaged file is fitted again, not trusted
    assert cache.get("stats", {"k": 2}, compute) == first and len(calls) == 3
    assert json.loads(path.read_text())["params"] == {"k": 2}
    assert fitted.FittedCache(None).get("stats", {}, compute) == first and len(calls) == 4  # uncached
    cache.get("stats", {"k": 2}, compute, code=2)  # changed fitting code: not the old artefact
    assert len(calls) == 5 and cache.get("stats", {"k": 2}, compute, code=2) == first and len(calls) == 5


def test_unwritable_folder_computes_without_caching(tmp_path, caplog, monkeypatch):
    def read_only(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fitted, "file_lock", read_only)  # (chmod does not stop root, who runs some CIs)
    assert fitted.FittedCache(tmp_path).get("stats", {}, lambda: [1]) == [1]
    assert "cannot cache fitted artefact stats" in caplog.text and not list(tmp_path.rglob("*.json"))


def _run_together(code: str, tmp_path: Path, n: int = 2) -> list[str]:
    """Runs `code` in n fresh Python processes released at the same moment; returns their stdouts."""
    go = tmp_path / "go"
    script = textwrap.dedent("""
        import os, sys, time
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.005)
    """) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(go), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(n)]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def test_two_processes_fit_once(tmp_path):
    outs = _run_together("""
        import json, time
        from fintrans.data.fitted import FittedCache
        def compute():
            with open(os.path.join(sys.argv[2], "calls"), "a") as f:
                f.write("x")
            time.sleep(0.5)  # a slow fit: the other process must wait for it, not start its own
            return {"pid_free_value": [1.5, 2.5]}
        print(json.dumps(FittedCache(sys.argv[2]).get("slow", {"a": 1}, compute)))
    """, tmp_path)
    assert (tmp_path / "calls").read_text() == "x"
    assert [json.loads(o) for o in outs] == [{"pid_free_value": [1.5, 2.5]}] * 2


def test_two_processes_building_one_dataset_both_get_it(tmp_path):
    """Item 8a: concurrent first use used to fail with tfds' FileExistsError renaming incomplete.*."""
    outs = _run_together("""
        import numpy as np
        import fintrans.data as fd
        ds = fd.load({"name": "digits", "data_dir": os.path.join(sys.argv[2], "tfds")})
        src = ds.source("test")
        batch = src.take(np.arange(len(src)))
        print(ds.info["num_examples"], float(batch["inputs"].sum()), batch["label"].tolist()[:20])
    """, tmp_path)
    results = [o.strip().splitlines()[-1] for o in outs]  # (tfds prints its build messages to stdout)
    assert results[0] == results[1] and "'test': 269" in results[0]
    assert sum("downloaded and prepared" in o for o in outs) == 1  # one built it, the other waited and read it
    version_dir = tmp_path / "tfds" / "digits" / "1.0.0"
    assert (version_dir / "dataset_info.json").is_file()
    assert not [p for p in (tmp_path / "tfds" / "digits").iterdir() if p.name.startswith("incomplete")]


def test_shapelets_are_fitted_at_load_once_and_match_direct_discovery(load, data_dir, monkeypatch, tmp_path):
    import shutil

    shutil.copytree(data_dir / "basic_motions", tmp_path / "basic_motions")  # a fresh fitted/ folder
    calls = []
    real = shapelets.score_candidates

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapelets, "score_candidates", counted)
    fit = {"per_class": 1, "window": 5, "pip_fraction": 0.1}  # (cheaper than the config's, same code path)
    cfg = {"name": "basic_motions", "data_dir": str(tmp_path), "prepare": False, "shapelets": fit}
    found = fd.load(cfg).info["shapelets"]
    assert len(calls) == 1
    again = fd.load(cfg).info["shapelets"]
    assert len(calls) == 1 and again == found  # read from the cache, not recomputed
    # what a config used to compute at parse time from the loaded train split
    ds = load("basic_motions")
    src = ds.source("train")
    arrays = src.take(np.arange(len(src)))
    series = [x[m] for x, m in zip(arrays["inputs"], arrays["mask"])]
    direct = shapelets.select(real(series, arrays["label"], window=5, pip_fraction=0.1), 1).as_config()
    assert found == direct and set(found) == {"shapelets", "shapelet_channels", "shapelet_starts", "shapelet_weights"}
    assert isinstance(found["shapelets"], tuple) and isinstance(found["shapelets"][0], tuple)
    assert "shapelets" not in ds.info  # only when the config asks for them
    with pytest.raises(fd.DataConfigError, match=r"unknown key\(s\) \['per_clas'\] in config field shapelets"):
        fd.load({**cfg, "shapelets": {"per_clas": 2}})
    with pytest.raises(fd.DataConfigError, match="shapelets.per_class must be an integer >= 1"):
        fd.load({**cfg, "shapelets": {"per_class": 0}})
    assert uea.SHAPELET_PARAMS["window"] == 20
