"""Subprocesses for the parallel tests that always get cleaned up (imported by the test modules).

Several devices (and several processes) need a fresh jax, so the trainer runs in subprocesses
(tests/parallel/lm_runner.py) with the device count fixed by XLA_FLAGS before jax starts.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("lm_runner.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240  # per subprocess; a hang (say a collective waiting for a dead peer) fails, never stalls CI
# XLA:CPU compilation is most of these tests' run time; without LLVM optimisation and with the older
# (non-MLIR) fusion emitters it is about 3x faster. Only code generation changes: the HLO, and so the
# SPMD partitioning under test, is the same.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One lm_runner subprocess; stdout and stderr go to files (no pipe can fill up and block it)."""

    def __init__(self, name: str, spec: dict, *, devices: int, data_dir: Path, logdir: Path):
        self.name = name
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        env = dict(os.environ)
        env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", FINTRANS_DATA_DIR=str(data_dir),
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
        env.pop("JAX_NUM_CPU_DEVICES", None)
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, str(RUNNER), json.dumps(spec)], cwd=REPO, env=env,
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def tail(self, chars: int = 4000) -> str:
        text = self.stderr_path.read_text(errors="replace") + "\n[stdout]\n" + \
            self.stdout_path.read_text(errors="replace")
        return text[-chars:]

    def result(self) -> dict:
        lines = [line for line in self.stdout_path.read_text().splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise AssertionError(f"{self.name} printed no RESULT line:\n{self.tail()}")
        return json.loads(lines[-1][len("RESULT "):])


def run_all(runs: list[Run], timeout: float = TIMEOUT_S) -> list[dict]:
    """Waits for every run; on a failure or timeout kills the others at once and fails with stderr tails.

    Always leaves no process behind.
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [r.proc.poll() for r in runs]
            failed = [r for r, c in zip(runs, codes) if c not in (None, 0)]
            if failed:
                r = failed[0]
                pytest.fail(f"{r.name} exited with code {r.proc.returncode}:\n{r.tail()}")
            if all(c == 0 for c in codes):
                return [r.result() for r in runs]
            if time.monotonic() > deadline:
                stuck = [r for r, c in zip(runs, codes) if c is None]
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {[r.name for r in stuck]}:\n" +
                            "\n".join(f"--- {r.name} ---\n{r.tail(2000)}" for r in stuck))
            time.sleep(0.2)
    finally:
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
        for r in runs:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a kill that did not land
                pass
