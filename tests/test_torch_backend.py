"""Runs tests/torch_backend in a process of its own whose Keras backend is torch (Keras
fixes its backend per process): fastrnn's layers on Keras' torch backend."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (pip install torch==2.13.0; .ci/run does)")
# One subprocess a file, so that xdist's workers can run them at once.
@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(os.path.join(ROOT, "tests", "torch_backend")) if f.startswith("test_") and f.endswith(".py")))
def test_the_torch_backend_suite_passes(name):
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning", os.path.join(ROOT, "tests", "torch_backend", name)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, tail
