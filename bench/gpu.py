"""python -m bench --device cuda: the CUDA kernels beside cuDNN (torch.nn) on one GPU.

Needs CuPy + numba-cuda and a GPU; torch with CUDA adds the anchors (skipped with
a note otherwise). No TensorFlow: the kernels are timed directly, forward +
backward, float32, with CUDA events around each repetition (synchronized).

Cases: SimpleRNN, GRU and LSTM at B64 T100 I128 H256, B16 T1024 I64 H128 and
B32 T50 I1024 H1024 beside torch.nn.RNN/GRU/LSTM (cuDNN); minGRU at B16 T4096
I1024 H1024 (and the two CPU shapes) beside the torch log-space minGRU; the scan
h_t = a_t h_(t-1) + b_t, sequential against Blelloch for T = 64 ... 65536,
against its floor: the bytes it must move (read a and b, write h) at the
device-to-device copy bandwidth measured in the same run.

`--smoke` runs every case once at tiny shapes, under Numba's CUDA simulator
when no GPU is present (NumPy arrays), to check the script itself.
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SHAPES = [(64, 100, 128, 256), (16, 1024, 64, 128), (32, 50, 1024, 1024)]
MINGRU_SHAPES = [(16, 4096, 1024, 1024), (16, 1024, 64, 128), (64, 100, 128, 256)]
SCAN_LENGTHS = [64, 256, 1024, 4096, 16384, 65536]
SCAN_ROWS = [(1, 128), (16, 128), (16, 1024)]
SMOKE_SHAPES = [(2, 5, 3, 4)]


class Timer:
    """Median and IQR (ms) of `fn` over repetitions, synchronized on the GPU."""

    def __init__(self, xp, budget, smoke):
        self.xp, self.budget, self.smoke = xp, budget, smoke

    def sync(self):
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.synchronize()

    def __call__(self, fn):
        if self.smoke:
            fn()
            return {"median": float("nan"), "iqr": float("nan"), "rounds": 1}
        for _ in range(3):
            fn()
        self.sync()
        times = []
        start = time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < self.budget and len(times) < 200):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        return {"median": statistics.median(times), "iqr": q[2] - q[0], "rounds": len(times)}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def recurrent_cases(xp, timer, shapes, only):
    from fastrnn.kernels.gru import cuda as gru
    from fastrnn.kernels.lstm import cuda as lstm
    from fastrnn.kernels.simple_rnn import cuda as rnn

    torch = _torch()
    rng = np.random.default_rng(0)
    cells = {"simple_rnn": (1, rnn.simple_rnn_forward, rnn.simple_rnn_backward, "RNN"),
             "gru": (3, gru.gru_forward, gru.gru_backward, "GRU"),
             "lstm": (4, lstm.lstm_forward, lstm.lstm_backward, "LSTM")}
    rows = []
    for cell, (gates, forward, backward, torch_name) in cells.items():
        if only and cell not in only:
            continue
        for B, T, I, H in shapes:
            def arr(*shape, scale=1.0):
                return xp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

            x, W, U = arr(B, T, I), arr(I, gates * H, scale=I ** -0.5), arr(H, gates * H, scale=H ** -0.5)
            bias = arr(2, 3 * H) if cell == "gru" else arr(gates * H)
            d_out = arr(B, T, H)
            states = [None, None] if cell == "lstm" else [None]

            def run():
                *_, saved = forward(x, *states, W, U, bias)
                backward(saved, d_out, *([None] * len(states)))

            row = {"case": cell, "shape": f"B{B} T{T} I{I} H{H}", "fastrnn": timer(run)}
            if torch is not None:
                module = getattr(torch.nn, torch_name)(I, H, batch_first=True).cuda()
                xt = torch.randn(B, T, I, device="cuda", requires_grad=True)
                dt = torch.randn(B, T, H, device="cuda")

                def run_torch():
                    y, _ = module(xt)
                    y.backward(dt)

                row["torch"] = timer(run_torch)
            rows.append(row)
    return rows


def mingru_cases(xp, timer, shapes):
    from fastrnn.kernels.mingru import cuda as mingru

    torch = _torch()
    rng = np.random.default_rng(1)
    rows = []
    for B, T, I, H in shapes:
        x = xp.asarray(rng.standard_normal((B, T, I)).astype(np.float32))
        W = xp.asarray((rng.standard_normal((I, 2 * H)) * I ** -0.5).astype(np.float32))
        b = xp.asarray(np.zeros(2 * H, np.float32))
        d_out = xp.asarray(rng.standard_normal((B, T, H)).astype(np.float32))
        row = {"case": "mingru", "shape": f"B{B} T{T} I{I} H{H}"}
        for method in ("sequential", "blelloch"):
            def run(method=method):
                _, _, saved = mingru.mingru_forward(x, None, W, b, method=method)
                mingru.mingru_backward(saved, d_out, None)

            row["fastrnn" if method == "blelloch" else "fastrnn sequential"] = timer(run)
        if torch is not None:
            from bench.torch_anchors import torch_log_space_mingru

            xt = torch.randn(B, T, I, device="cuda", requires_grad=True)
            Wt = (torch.randn(I, 2 * H, device="cuda") * I ** -0.5).requires_grad_()
            bt = torch.zeros(2 * H, device="cuda", requires_grad=True)
            dt = torch.randn(B, T, H, device="cuda")
            row["torch"] = timer(lambda: torch_log_space_mingru(xt, Wt, bt).backward(dt))
        rows.append(row)
    return rows


def scan_cases(xp, timer, lengths, rows_units):
    from fastrnn.kernels.scan import cuda as scan

    rng = np.random.default_rng(2)
    rows = []
    for B, H in rows_units:
        for T in lengths:
            a = xp.asarray(rng.uniform(0.5, 1.0, (B, T, H)).astype(np.float32))
            b = xp.asarray(rng.standard_normal((B, T, H)).astype(np.float32))
            out = xp.empty_like(a)
            h0 = xp.zeros((B, H), np.float32)
            row = {"case": f"scan B{B} H{H}", "shape": f"T{T}",
                   "bytes": 3 * a.nbytes, "auto": scan.choose_method(B, T, H)}
            for method in ("sequential", "blelloch"):
                row[method] = timer(lambda m=method: scan.run_scan(xp, a, b, h0, out, False, m))
            big = xp.empty(2 * a.size, np.float32)
            big_out = xp.empty_like(big)
            copy = timer(lambda: xp.copyto(big_out, big))  # reads and writes 2 arrays' bytes
            row["copy GB/s"] = 2 * big.nbytes / (copy["median"] * 1e-3) / 1e9
            rows.append(row)
    return rows


def _ms(stats):
    return f"{stats['median']:>10.3f}" if stats else f"{'-':>10}"


def report(recurrent, mingru, scans):
    lines = [f"{'case':<12}{'shape':<24}{'fastrnn ms':>11}{'torch ms':>10}{'vs torch':>10}"]
    for row in recurrent + mingru:
        fast, other = row["fastrnn"]["median"], row.get("torch", {}).get("median")
        ratio = f"{other / fast:>9.2f}x" if other else f"{'-':>10}"
        lines.append(f"{row['case']:<12}{row['shape']:<24}{fast:>11.3f}{_ms(row.get('torch'))}"
                     f"{ratio}")
        if "fastrnn sequential" in row:
            lines.append(f"{'  (scan: sequential)':<36}{row['fastrnn sequential']['median']:>11.3f}")
    lines.append("")
    lines.append("scan (ms); floor = 3 arrays' bytes at the measured copy bandwidth")
    lines.append(f"{'case':<16}{'T':>8}{'sequential':>12}{'blelloch':>10}{'floor':>9}"
                 f"{'best/floor':>11}{'auto':>12}")
    for row in scans:
        floor = row["bytes"] / (row["copy GB/s"] * 1e9) * 1e3 if row["copy GB/s"] else float("nan")
        best = min(row["sequential"]["median"], row["blelloch"]["median"])
        lines.append(f"{row['case']:<16}{row['shape'][1:]:>8}{row['sequential']['median']:>12.3f}"
                     f"{row['blelloch']['median']:>10.3f}{floor:>9.3f}{floor / best:>10.0%} "
                     f"{row['auto']:>11}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench --device cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", default="", help="comma-separated: simple_rnn,gru,lstm,mingru,scan")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timed rounds per case")
    parser.add_argument("--full", action="store_true", help="also T=65536 scans")
    parser.add_argument("--quick", action="store_true", help="the default")
    parser.add_argument("--smoke", action="store_true",
                        help="one call per case at tiny shapes (simulator when no GPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    only = {c.strip() for c in args.only.split(",") if c.strip()}

    if args.smoke and importlib.util.find_spec("cupy") is None:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is first imported
    from fastrnn.kernels.gpu import cuda as _cuda
    if _cuda.simulator():
        xp = np
    else:
        reason = _cuda.missing_reason()
        if reason is not None:
            print(f"python -m bench --device cuda: {reason}")
            return 2
        import cupy as xp
    timer = Timer(xp, args.budget, args.smoke)
    device = "Numba CUDA simulator" if xp is np else xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    torch = _torch()
    print(f"device: {device}")
    if torch is None:
        print("torch with CUDA is not available: the cuDNN and log-space anchors are left out")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    lengths = [16, 40] if args.smoke else [t for t in SCAN_LENGTHS if args.full or t < 65536]
    scan_rows = [(2, 5)] if args.smoke else SCAN_ROWS
    recurrent = recurrent_cases(xp, timer, shapes, only) if not only or only - {"mingru", "scan"} else []
    mingru = mingru_cases(xp, timer, SMOKE_SHAPES if args.smoke else MINGRU_SHAPES) \
        if not only or "mingru" in only else []
    scans = scan_cases(xp, timer, lengths, scan_rows) if not only or "scan" in only else []
    print(report(recurrent, mingru, scans))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else HERE / "results" / f"gpu-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": getattr(torch, "__version__", None),
                               "recurrent": recurrent, "mingru": mingru, "scan": scans},
                              indent=1, default=float))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
