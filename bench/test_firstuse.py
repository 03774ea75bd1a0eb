"""First use, cold and warm: a fresh process imports fastrnn, builds a small LSTM + GRU
model and takes its first training steps (bench/firstuse.py), once with an empty
Numba cache (cold: every kernel compiled) and once more with the same cache (warm:
loaded), beside the same model with Keras' layers in a fresh process.

Slow (a cold run compiles the kernels: a minute or more on 2 cores): its own suite,
`python -m bench --suite firstuse`, part of --full.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.conftest import ROUND, record_samples

ROOT = Path(__file__).resolve().parent.parent
CASE = "first use LSTM(16)+GRU(16)"
PHASES = ("import", "build", "first step", "second step", "process")


def run_first_use(cache_dir, use_keras=False, timeout=900, cell=None):
    """One fresh process of bench/firstuse.py: its JSON, with "process" (the whole
    subprocess' wall time, interpreter start included)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    cmd = [sys.executable, "-m", "bench.firstuse"] + (["--keras"] if use_keras else [])
    cmd += ["--cell", cell] if cell else []
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


def test_first_use(benchmark, request):
    benchmark.group = CASE
    results = {}

    def run():
        with tempfile.TemporaryDirectory(prefix="fastrnn-numba-cache-") as cache:
            results["cold"] = run_first_use(cache)
            results["warm"] = run_first_use(cache)
        results["keras"] = run_first_use(None, use_keras=True)

    benchmark.extra_info.update(cell=CASE, shape="B32 T15 I1", mode="first use", impl=ROUND)
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    for impl, result in results.items():
        for phase in PHASES:
            extra = record_samples(request, benchmark, impl, [result[phase]],
                                   dict(cell=CASE, shape="B32 T15 I1", mode=phase,
                                        kind="firstuse"))
            extra["routes"] = result["routes"]


CELLS = ("LSTM", "GRU", "SimpleRNN", "MinGRU")
CELL_CASE = "first use, one cell"


def test_first_use_per_cell(benchmark, request):
    """Each cell alone (Input(15, 1) -> cell(16) -> Dense(1)), float32: what one cell
    and dtype costs a fresh process, cold (its own empty cache) and warm."""
    benchmark.group = CELL_CASE
    results = {}

    def run():
        for cell in CELLS:
            with tempfile.TemporaryDirectory(prefix="fastrnn-numba-cache-") as cache:
                results[(cell, "cold")] = run_first_use(cache, cell=cell)
                results[(cell, "warm")] = run_first_use(cache, cell=cell)

    benchmark.extra_info.update(cell=CELL_CASE, shape="B32 T15 I1", mode="first use",
                                impl=ROUND)
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    for (cell, impl), result in results.items():
        for phase in PHASES:
            record_samples(request, benchmark, impl, [result[phase]],
                           dict(cell=cell, shape="B32 T15 I1", mode=phase,
                                kind="firstuse_cell"))
