"""Every trainer hook under a mesh: the hooked model (BatchNorm state, aux loss, trainable subset, EMA)
on 4 forced host devices (data=2 x fsdp=2) gives one device's losses, parameters, statistics and EMA."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from fintrans.train import read_metrics, train_and_evaluate
from tests.train.conftest import tiny_hooked
from tests.train.test_hooks import HOOKS

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = dict(total_steps=4, eval_every=0, checkpoint_every=0, **HOOKS)

SCRIPT = r'''
import json, sys
import jax, numpy as np
from fintrans import models, parallel
from fintrans.train import read_metrics, train_and_evaluate
from tests.train.conftest import HookedMLP, HookedMLPConfig, tiny_hooked
from tests.train.test_hooks_sharded import OVERRIDES
models.register("test_hooked_mlp", HookedMLPConfig, HookedMLP)
c = tiny_hooked(**OVERRIDES)
c.mesh.data, c.mesh.fsdp = 2, 2
r = train_and_evaluate(c, sys.argv[1])
leaves = {jax.tree_util.keystr(p): np.asarray(v).tolist() for p, v in jax.tree_util.tree_leaves_with_path(r["state"])}
specs = parallel.describe(r["state"].opt_state)
print("RESULT" + json.dumps({"losses": [m["train/loss"] for m in read_metrics(sys.argv[1]) if "train/loss" in m],
                             "leaves": leaves, "devices": len(jax.devices()),
                             "body_kernel": str(r["state"].params["body"]["kernel"].sharding.spec)}))
'''


def test_sharded_run_matches_one_device(tmp_path):
    one = train_and_evaluate(tiny_hooked(**OVERRIDES), tmp_path / "one")  # builds the dataset the subprocess reads
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "four")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT"):])
    assert four["devices"] == 4 and "fsdp" in four["body_kernel"]  # the body kernel really is split
    np.testing.assert_allclose(four["losses"], [m["train/loss"] for m in read_metrics(tmp_path / "one")
                                                if "train/loss" in m], rtol=2e-5)
    mine = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(one["state"])}
    assert mine.keys() == four["leaves"].keys()  # params, opt_state, batch_stats and EMA alike
    for key, value in mine.items():
        np.testing.assert_allclose(np.asarray(four["leaves"][key]), value, rtol=2e-4, atol=1e-6, err_msg=key)
