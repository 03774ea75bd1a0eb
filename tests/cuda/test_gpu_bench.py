"""`python -m bench --device cuda --smoke` runs every GPU benchmark case once
(under the simulator without a GPU), so the script itself is checked in CI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[test]')")


def test_gpu_benchmark_smoke_run(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda", "--smoke",
                           "--json", str(out)], cwd=root, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["case"] for r in data["recurrent"]] == ["simple_rnn", "gru", "lstm"]
    assert [r["case"] for r in data["mingru"]] == ["mingru"]
    assert {r["shape"] for r in data["scan"]} == {"T16", "T40"}
    assert "scan (ms)" in proc.stdout
