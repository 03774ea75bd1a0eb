"""How the cost grows: forward+backward against T (16 ... 16384) and against H
(32 ... 1024), for GRU and minGRU, beside the anchors, in one run.

GRU: fastrnn's kernels, keras.layers.GRU, torch.nn.GRU and the GEMM floor.
minGRU: fastrnn's kernels, the Dense-gates + tf loop layer (up to T=1024 and
H=256: it grows linearly and a T=16384 call would take half a minute), the
torch log-space scan and the floor. The case ids carry T, so --quick (which
leaves out "16384") stops at T=4096.
"""

import pytest

from bench.cases import IMPLEMENTATIONS, torch_available
from bench.test_mingru import mingru_case

B, I = 16, 64
T_FIXED, H_FIXED = 256, 128
LENGTHS = [16, 64, 256, 1024, 4096, 16384]
WIDTHS = [32, 64, 128, 256, 512, 1024]
SHAPES = ([("T", (B, t, I, H_FIXED)) for t in LENGTHS]
          + [("H", (B, T_FIXED, I, h)) for h in WIDTHS if h != H_FIXED])
IDS = [f"{axis}-T{s[1]}-H{s[3]}" for axis, s in SHAPES]


def _skip_if_missing(impl):
    if impl in ("torch", "torch log-space") and not torch_available():
        pytest.skip("torch is not installed (pip install torch) - its anchor is left out")


@pytest.mark.parametrize("impl", ["fastrnn", "keras", "torch", "floor"])
@pytest.mark.parametrize("axis,shape", SHAPES, ids=IDS)
def test_gru_scaling(run_benchmark, benchmark, axis, shape, impl):
    _skip_if_missing(impl)
    label = "B{} T{} I{} H{}".format(*shape)
    benchmark.group = f"gru scaling | {label}"
    run_benchmark(IMPLEMENTATIONS[impl]("gru", shape, "forward+backward"), impl=impl,
                  cell="gru (scaling)", shape=label, mode="forward+backward")


# The tf loop grows linearly: left out past T=1024 and H=256 to keep the run short.
MINGRU_CASES = [pytest.param(axis, shape, impl, id=f"{case_id}-{impl}")
                for (axis, shape), case_id in zip(SHAPES, IDS)
                for impl in ("fastrnn", "tf loop", "torch log-space", "floor")
                if impl != "tf loop" or (shape[1] <= 1024 and shape[3] <= 256)]


@pytest.mark.parametrize("axis,shape,impl", MINGRU_CASES)
def test_mingru_scaling(run_benchmark, benchmark, axis, shape, impl):
    _skip_if_missing(impl)
    label = "B{} T{} I{} H{}".format(*shape)
    benchmark.group = f"mingru scaling | {label}"
    name = {"tf loop": "keras", "torch log-space": "torch"}.get(impl, impl)
    run_benchmark(mingru_case(impl, shape), impl=name, cell="mingru (scaling)", shape=label,
                  mode="forward+backward")
