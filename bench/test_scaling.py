"""How the cost grows: forward+backward against T (16 ... 16384) and against H
(32 ... 1024), for GRU and minGRU, beside the anchors, in one run.

GRU: fastrnn's kernels, keras.layers.GRU, torch.nn.GRU and the GEMM floor.
minGRU: fastrnn's kernels, the Dense-gates + tf loop layer (up to T=1024 and
H=256: it grows linearly and a T=16384 call would take half a minute), the
torch log-space scan and the floor. The case ids carry T, so --quick (which
leaves out "16384") stops at T=4096.
"""

import pytest

from bench.cases import IMPLEMENTATIONS
from bench.test_kernels import anchors
from bench.test_mingru import NAMES, mingru_case

B, I = 16, 64
T_FIXED, H_FIXED = 256, 128
LENGTHS = [16, 64, 256, 1024, 4096, 16384]
WIDTHS = [32, 64, 128, 256, 512, 1024]
SHAPES = ([("T", (B, t, I, H_FIXED)) for t in LENGTHS]
          + [("H", (B, T_FIXED, I, h)) for h in WIDTHS if h != H_FIXED])
IDS = [f"{axis}-T{s[1]}-H{s[3]}" for axis, s in SHAPES]


@pytest.mark.parametrize("axis,shape", SHAPES, ids=IDS)
def test_gru_scaling(run_paired, benchmark, axis, shape):
    label = "B{} T{} I{} H{}".format(*shape)
    benchmark.group = f"gru scaling | {label}"
    fns = {impl: IMPLEMENTATIONS[impl]("gru", shape, "forward+backward")
           for impl in anchors(["fastrnn", "keras", "torch", "floor"])}
    run_paired(fns, cell="gru (scaling)", shape=label, mode="forward+backward")


@pytest.mark.parametrize("axis,shape", SHAPES, ids=IDS)
def test_mingru_scaling(run_paired, benchmark, axis, shape):
    label = "B{} T{} I{} H{}".format(*shape)
    benchmark.group = f"mingru scaling | {label}"
    # The tf loop grows linearly: left out past T=1024 and H=256 to keep the run short.
    loop = shape[1] <= 1024 and shape[3] <= 256
    fns = {NAMES.get(impl, impl): mingru_case(impl, shape)
           for impl in anchors(["fastrnn", "tf loop", "torch log-space", "floor"])
           if impl != "tf loop" or loop}
    run_paired(fns, cell="mingru (scaling)", shape=label, mode="forward+backward")
