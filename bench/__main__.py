"""python -m bench: fastrnn beside Keras, PyTorch and the NumPy GEMM floor, in one run.

Prints medians (ms) and ratios per case, with the machine and library versions,
then the tables of their own: seed-style models beside Keras, the numpy_function
route and a stand-in (the recurrent layers' share of a step); the bridge (a
4-layer model of no-work layers: native op pair against tf.numpy_function); the
fixed cost of one call split into dispatch, native bridge and numpy_function
bridge; and (--full or --suite firstuse) a fresh process's first use, cold and
warm. Saves pytest-benchmark's JSON under bench/results/.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHORS = ("keras", "torch", "floor")
DEFAULT_SUITES = ("kernels", "layers", "fits", "bridge", "mingru")
FULL_SUITES = ("scaling", "firstuse")  # added by --full


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def versions():
    # Read from the installed metadata: importing TensorFlow and torch here
    # only for their versions would cost seconds of every run.
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("fastrnn", "numpy", "numba", "scipy", "tensorflow", "keras", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# Cases printed in tables of their own (extra_info "kind"), not in the main table.
OWN_TABLES = ("fit", "model", "bridge", "overhead", "firstuse", "firstuse_cell")


def table(data):
    rows = {}
    for bench in _entries(data):
        info = bench["extra_info"]
        if info.get("kind") in OWN_TABLES:
            continue
        key = (info["cell"], info["shape"], info["mode"])
        rows.setdefault(key, {})[info["impl"]] = bench["stats"]
    lines = []
    width = max([len(k[0]) for k in rows] + [4]) + 2
    header = (f"{'case':<{width}}{'shape':<20}{'mode':<18}{'fastrnn ms':>11}{'IQR':>7}"
              f"{'keras ms':>10}{'torch ms':>10}{'floor ms':>10}"
              f"{'vs keras':>10}{'vs torch':>10}{'/ floor':>9}")
    scans = {key: stats for key, stats in rows.items() if key[0].startswith("scan")}
    if len(rows) > len(scans):
        lines += [header, "-" * len(header)]
    scans = {key: stats for key, stats in rows.items() if key[0].startswith("scan")}
    for (cell, shape, mode), stats in rows.items():
        if (cell, shape, mode) in scans:
            continue
        med = {k: s["median"] * 1e3 for k, s in stats.items()}
        fast = med.get("fastrnn")
        iqr = stats["fastrnn"]["iqr"] * 1e3 if "fastrnn" in stats else float("nan")

        def ms(k):
            return f"{med[k]:>10.2f}" if k in med else f"{'-':>10}"

        def speedup(k):
            return f"{med[k] / fast:>9.2f}x" if k in med and fast else f"{'-':>10}"

        floor = f"{fast / med['floor']:>8.2f}x" if "floor" in med and fast else f"{'-':>9}"
        lines.append(f"{cell:<{width}}{shape:<20}{mode:<18}{fast:>11.2f}{iqr:>7.2f}"
                     f"{ms('keras')}{ms('torch')}{ms('floor')}"
                     f"{speedup('keras')}{speedup('torch')}{floor}")
    if scans:
        lines.append("")
        lines.append("linear scan h_t = a_t h_(t-1) + b_t (ms): sequential (parallel over rows) "
                     "against Blelloch (parallel over time); copy = moving b once, the floor")
        lines.append(f"{'case':<16}{'T':>8}{'sequential':>12}{'blelloch':>10}{'copy':>9}{'auto picks':>12}")
        from fastrnn.kernels.scan.cpu import choose_method

        for (cell, shape, _), stats in scans.items():
            med = {k: s["median"] * 1e3 for k, s in stats.items()}
            batch, time = int(cell.split()[1][1:]), int(shape[1:])
            lines.append(f"{cell:<16}{time:>8}{med.get('fastrnn', float('nan')):>12.3f}"
                         f"{med.get('blelloch', float('nan')):>10.3f}{med.get('copy', float('nan')):>9.3f}"
                         f"{choose_method(batch, time):>12}")
    for part in (model_table(data), fit_table(data), bridge_table(data), overhead_table(data),
                 firstuse_table(data), firstuse_cell_table(data)):
        if part:
            lines += ["", part] if lines else [part]
    return "\n".join(lines)


def _kind(data, kind):
    """{(cell, shape, mode): {impl: entry}} of the cases of one kind, in run order."""
    rows = {}
    for bench in _entries(data):
        info = bench["extra_info"]
        if info.get("kind") == kind:
            rows.setdefault((info["cell"], info["shape"], info["mode"]), {})[info["impl"]] = bench
    return rows


def _median(entry, scale=1e3):
    return entry["stats"]["median"] * scale if entry else float("nan")


_ROUTE_WORDS = {"native op": "native", "numpy_function fallback": "numpy_function",
                "cuda": "cuda", "keras": "keras loop"}


def _routes(entry):
    routes = (entry or {}).get("extra_info", {}).get("routes") or []
    return "+".join(_ROUTE_WORDS.get(r, r) for r in routes) or "-"


def model_table(data):
    """Per seed-style model: Keras, fastrnn, fastrnn on the numpy_function route and the
    stand-in; the recurrent share (step - stand-in) of Keras and fastrnn, and its ratio."""
    rows = _kind(data, "model")
    if not rows:
        return ""
    width = max(len(k[0]) for k in rows) + 2
    header = (f"{'model':<{width}}{'mode':<18}{'keras':>8}{'fastrnn':>9}{'np_func':>9}"
              f"{'stand-in':>9}{'keras rec':>10}{'fast rec':>9}{'rec x':>7}{'step x':>7}"
              f"{'rec %':>7}  fastrnn route")
    lines = ["seed-style models, one step (ms, medians): keras, fastrnn (its route: last "
             "column), np_func = fastrnn on the tf.numpy_function route, stand-in = every "
             "recurrent layer replaced by a Dense on its inputs (bench/bridge.py StandIn); "
             "rec = step - stand-in, the recurrent layers' share; 'rec x' = keras rec / "
             "fastrnn rec, 'step x' = keras step / fastrnn step; 'rec %' = keras rec as a "
             "share of keras' step (what any recurrent speed-up can act on)",
             header, "-" * len(header)]
    flagged = []
    for (cell, _, mode), impls in rows.items():
        med = {impl: _median(entry) for impl, entry in impls.items()}
        keras_ms, fast_ms = med.get("keras", float("nan")), med.get("fastrnn", float("nan"))
        stand = med.get("stand-in", float("nan"))
        keras_rec, fast_rec = keras_ms - stand, fast_ms - stand
        rec_x = f"{keras_rec / fast_rec:>6.2f}x" if fast_rec > 0 and keras_rec > 0 else f"{'-':>7}"
        share = f"{keras_rec / keras_ms:>7.0%}" if keras_ms > 0 else f"{'-':>7}"
        np_routes = _routes(impls.get("numpy_function"))
        mark = ""
        if "numpy_function" in impls and np_routes != "numpy_function":
            mark = "!"
            flagged.append(f"{cell} {mode}: the np_func model ran on {np_routes}")
        lines.append(f"{cell:<{width}}{mode:<18}{keras_ms:>8.2f}{fast_ms:>9.2f}"
                     f"{med.get('numpy_function', float('nan')):>8.2f}{mark or ' '}{stand:>9.2f}"
                     f"{keras_rec:>10.2f}{fast_rec:>9.2f}{rec_x}{keras_ms / fast_ms:>6.2f}x"
                     f"{share}  {_routes(impls.get('fastrnn'))}")
    lines += [f"! {text}" for text in flagged]
    return "\n".join(lines)


def fit_table(data):
    """Per model fitted as users fit it (bench/fits.py): the fit step's median for Keras
    and fastrnn on static, dynamic and tf.data batches; fastrnn's speed-up on each,
    and its dynamic and tf.data steps against its own static one."""
    rows = {}
    for bench in _entries(data):
        info = bench["extra_info"]
        if info.get("kind") == "fit":
            rows.setdefault(info["cell"], {})[(info["impl"], info["shape"])] = bench
    if not rows:
        return ""
    kinds = ("static", "dynamic", "tf.data")
    width = max(len(k) for k in rows) + 2
    header = (f"{'model':<{width}}" + "".join(f"{'keras ' + k:>15}{'fastrnn':>9}{'x':>7}"
                                              for k in kinds)
              + f"{'dyn/st':>8}{'tfd/st':>8}  fastrnn route")
    lines = ["model.fit, one step (ms, medians of the full steps of each epoch; bench/fits.py): "
             "static = N a multiple of the batch, dynamic = one row more (the step traced with "
             "batch None), tf.data = a batched pipeline; 'x' = keras / fastrnn on the same "
             "data; dyn/st, tfd/st = fastrnn's dynamic, tf.data step / its static step",
             header, "-" * len(header)]
    for name, entries in rows.items():
        med = {key: _median(entry) for key, entry in entries.items()}
        line = f"{name:<{width}}"
        for kind in kinds:
            k, f = med.get(("keras", kind), float("nan")), med.get(("fastrnn", kind), float("nan"))
            line += f"{k:>15.2f}{f:>9.2f}{k / f:>6.2f}x"
        static = med.get(("fastrnn", "static"), float("nan"))
        line += (f"{med.get(('fastrnn', 'dynamic'), float('nan')) / static:>8.3f}"
                 f"{med.get(('fastrnn', 'tf.data'), float('nan')) / static:>8.3f}")
        routes = sorted({r for (impl, _), e in entries.items() if impl == "fastrnn"
                         for r in (e["extra_info"].get("routes") or [])})
        line += "  " + ("+".join(_ROUTE_WORDS.get(r, r) for r in routes) or "-")
        lines.append(line)
    return "\n".join(lines)


def bridge_table(data):
    """The 4-layer model with no-work layers: (step - nothing) / layers per bridge."""
    rows = _kind(data, "bridge")
    if not rows:
        return ""
    lines = ["bridge: the 4-layer forecasting model (B32 T15 I1, 45 units a layer) whose layers "
             "do no recurrent work (bench/bridge.py: a projection, then a no-work native op "
             "pair, a no-work tf.numpy_function pair, or nothing); per layer = (step - nothing) "
             "/ 4: one layer's forward+backward bridge (forward only in predict_on_batch)",
             f"{'mode':<18}{'nothing ms':>11}{'native ms':>11}{'np_func ms':>11}"
             f"{'native us/layer':>17}{'np_func us/layer':>18}"]
    for (_, _, mode), impls in rows.items():
        layers = next(iter(impls.values()))["extra_info"].get("layers", 4)
        med = {impl: _median(entry) for impl, entry in impls.items()}
        nothing = med.get("nothing", float("nan"))
        native, numpy = med.get("native op pair", float("nan")), med.get("numpy_function pair",
                                                                          float("nan"))
        per_native = (native - nothing) / layers * 1e3
        per_numpy = (numpy - nothing) / layers * 1e3
        lines.append(f"{mode:<18}{nothing:>11.2f}{native:>11.2f}{numpy:>11.2f}"
                     f"{per_native:>17.0f}{per_numpy:>18.0f}")
        if mode == "train_on_batch":
            verdict = "met" if per_native <= 50 else "NOT met"
            if per_native < 0:
                verdict = "not shown: below zero, the noise is larger than the bridge"
            lines.append(f"target: at most 50 us a layer forward+backward for the native pair: "
                         f"{verdict} ({per_native:.0f} us)")
    return "\n".join(lines)


_OVERHEAD_ROWS = (
    ("dispatch", "dispatch: an empty tf.function (tf.identity)"),
    ("native forward", "no-work native op, forward"),
    ("native pair", "no-work native op pair, forward + backward"),
    ("numpy_function forward", "no-work tf.numpy_function, forward"),
    ("numpy_function pair", "no-work tf.numpy_function pair, forward + backward"),
    ("fastrnn", "fastrnn.GRU(1) forward, fastrnn's route"),
    ("fastrnn numpy_function", "fastrnn.GRU(1) forward, numpy_function route"),
    ("keras", "keras.layers.GRU(1) forward"),
)


def overhead_table(data):
    """The fixed cost of one call, split: dispatch, native bridge, numpy_function bridge."""
    rows = _kind(data, "overhead")
    if not rows:
        return ""
    (_, shape, _), impls = next(iter(rows.items()))
    med = {impl: _median(entry, 1e6) for impl, entry in impls.items()}
    dispatch = med.get("dispatch", float("nan"))
    width = max(len(text) for _, text in _OVERHEAD_ROWS) + 2
    lines = [f"fixed cost of one call inside a tf.function, on a [1, 1, 1] input ({shape}; "
             "medians, us; 'beyond' = minus the empty tf.function's call, which is TensorFlow's)",
             f"{'what':<{width}}{'us':>8}{'beyond':>9}"]
    for impl, text in _OVERHEAD_ROWS:
        if impl in med:
            beyond = f"{med[impl] - dispatch:>9.0f}" if impl != "dispatch" else f"{'-':>9}"
            lines.append(f"{text:<{width}}{med[impl]:>8.0f}{beyond}")
    if "fastrnn kernel" in med:
        lines.append(f"{'fastrnn.kernels.gru_forward from Python (no TF)':<{width}}"
                     f"{med['fastrnn kernel']:>8.0f}{'':>9}")
    if {"dispatch", "native pair", "numpy_function pair"} <= set(med):
        beyond = {impl: med.get(impl, float("nan")) - dispatch for impl in med}
        lines.append(f"dispatch {dispatch:.0f} us, native bridge {beyond['native pair']:.0f} us "
                     f"(forward op alone {beyond.get('native forward', float('nan')):.0f} us), "
                     f"numpy_function bridge {beyond['numpy_function pair']:.0f} us (forward "
                     f"alone {beyond.get('numpy_function forward', float('nan')):.0f} us): "
                     "forward+backward pairs, beyond dispatch")
    if "fastrnn" in impls:
        lines.append(f"fastrnn.GRU(1) ran on: {_routes(impls['fastrnn'])} (fastrnn's route), "
                     f"{_routes(impls.get('fastrnn numpy_function'))} (numpy_function route)")
    return "\n".join(lines)


_FIRSTUSE_ROWS = (("cold", "fastrnn, cold (empty Numba cache)"),
                  ("warm", "fastrnn, warm (the same cache again)"),
                  ("keras", "Keras' own layers"))


def firstuse_table(data):
    """A fresh process's import, build and first steps, cold and warm (seconds)."""
    rows = _kind(data, "firstuse")
    if not rows:
        return ""
    cell = next(iter(rows))[0]
    phases = [mode for (_, _, mode) in rows]
    width = max(len(text) for _, text in _FIRSTUSE_ROWS) + 2
    lines = [f"{cell}, first use in a fresh process (seconds): import = fastrnn with "
             "TensorFlow and Keras; build = model built and compiled; first/second step = "
             "train_on_batch at B32 T15; process = the whole subprocess",
             f"{'':<{width}}" + "".join(f"{phase:>13}" for phase in phases) + "  routes"]
    by_impl = {}
    for (_, _, mode), impls in rows.items():
        for impl, entry in impls.items():
            by_impl.setdefault(impl, {})[mode] = entry
    for impl, text in _FIRSTUSE_ROWS:
        if impl in by_impl:
            entries = by_impl[impl]
            lines.append(f"{text:<{width}}"
                         + "".join(f"{_median(entries.get(p), 1):>13.2f}" for p in phases)
                         + f"  {_routes(next(iter(entries.values())))}")
    return "\n".join(lines)


def firstuse_cell_table(data):
    """Each cell alone in a fresh process, float32, cold and warm (seconds)."""
    rows = _kind(data, "firstuse_cell")
    if not rows:
        return ""
    phases = ("import", "first step")
    lines = ["One cell in a fresh process: Input(15, 1) -> cell(16) -> Dense(1), float32, "
             "train_on_batch at B32 (seconds; cold = an empty Numba cache, warm = the same "
             "cache again)",
             f"{'cell':<12}" + "".join(f"{impl + ' ' + phase:>18}" for impl in ("cold", "warm")
                                       for phase in phases)]
    cells = []
    for cell, _, _ in rows:
        if cell not in cells:
            cells.append(cell)
    for cell in cells:
        line = f"{cell:<12}"
        for impl in ("cold", "warm"):
            for phase in phases:
                line += f"{_median(rows.get((cell, 'B32 T15 I1', phase), {}).get(impl), 1):>18.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    if device.parse_known_args(argv)[0].device == "cuda":
        from bench import gpu  # the CUDA kernels beside cuDNN; no TensorFlow

        return gpu.main(argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the CUDA kernels beside cuDNN on a GPU (see bench/gpu.py)")
    parser.add_argument("--backend", choices=("tensorflow", "torch"), default="tensorflow",
                        help="Keras' backend: torch runs bench/test_torch.py instead of the "
                             "suites (layers and seed-style models, fastrnn beside Keras' own "
                             "layers on the torch backend)")
    parser.add_argument("--only", default="", help="comma-separated cells: gru,simple_rnn,mingru")
    parser.add_argument("--suite", default=",".join(DEFAULT_SUITES),
                        help="comma-separated suites: kernels (kernel level, beside Keras, torch "
                             "and the GEMM floor), layers (Keras layers, and seed-style models "
                             "beside Keras, the numpy_function route and a stand-in), bridge "
                             "(a 4-layer model of no-work layers: the native op pair against "
                             "tf.numpy_function; the fixed cost of one call, split), mingru "
                             "(minGRU kernels, the scan against T, a language model), scaling "
                             "(GRU and minGRU time against T and H), firstuse (a fresh "
                             "process's import and first steps, cold and warm Numba cache; "
                             "minutes); --full adds scaling and firstuse")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="the default: fewer timed rounds, the longest scans left out")
    size.add_argument("--full", action="store_true", help="every case, more timed rounds")
    parser.add_argument("--budget", default=None,
                        help="seconds of timed rounds per case (quick 0.15, full 0.5); 0 runs "
                             "the fewest rounds (one rotation), to check that cases run")
    parser.add_argument("-k", dest="select", default=None, metavar="EXPR",
                        help="only the cases whose pytest ids match EXPR (pytest -k), e.g. "
                             "'test_model and GRU'")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for BLAS, Numba, TensorFlow and torch (default: all)")
    parser.add_argument("--json", default=None, help="where to save the run (JSON)")
    parser.add_argument("--plot", default=None,
                        help="where to write the speed-up plot (PNG; needs matplotlib)")
    parser.add_argument("--compare", default=None, metavar="OLD_JSON",
                        help="a saved run to compare this one with, case by case")
    args = parser.parse_args(argv)
    budget = args.budget or ("0.5" if args.full else "0.15")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else HERE / "results" / f"run-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    suites = [suite.strip() for suite in args.suite.split(",") if suite.strip()]
    if args.full:
        suites += [suite for suite in FULL_SUITES if suite not in suites]
    files = [str(HERE / f"test_{suite}.py") for suite in suites]
    if args.backend == "torch":
        files = [str(HERE / "test_torch.py")]
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-only",
           "-q", "-p", "no:cacheprovider", f"--benchmark-json={out}",
           f"--bench-budget={budget}", "--benchmark-disable-gc", "--benchmark-quiet"]
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    selection = []
    if only:
        selection.append("(" + " or ".join(only + ["overhead", "bridge", "first_use"]) + ")")
    if not args.full:
        # The longest scans (test ids carry T), the language-model epochs and the
        # layer-level forward-only cases run with --full only.
        selection.append("not 65536 and not 16384 and not lm_epoch "
                         "and not (test_layer and (forward- or T1024))")
    if args.select:
        selection.append(f"({args.select})")
    if selection:
        cmd += ["-k", " and ".join(selection)]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["KERAS_BACKEND"] = args.backend
    if args.threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            env[name] = str(args.threads)
    print(f"machine: {machine()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if versions()["torch"] == "not installed":
        print("torch is not installed: its anchor is left out (pip install torch to add it)")
    if not args.full:
        print("--quick (the default): scans past T=4096, the language-model epochs, the "
              "layer-level forward-only and T=1024 cases, the scaling curves and first use "
              "(--suite firstuse) are left out; --full runs them")
    print("running:", " ".join(cmd[2:]), flush=True)
    # pytest's own progress line (one dot per case, percent done) is the progress bar.
    result = subprocess.run(cmd, cwd=HERE.parent, text=True, env=env)
    if result.returncode != 0 or not out.exists():
        return result.returncode or 1
    data = json.loads(out.read_text())
    data["fastrnn_run"] = {"machine": machine(), "versions": versions(), "cpu_flags": cpu_flags(),
                           "threads": args.threads or os.cpu_count(), "budget_s": float(budget),
                           "git_commit": git_commit()}
    out.write_text(json.dumps(data, indent=1))
    print()
    print("float32, medians; the implementations of a case are timed in the same rounds, each "
          "timed call right after an untimed one of its own (bench/conftest.py); "
          "'vs keras' / 'vs torch' = their time / fastrnn's (above 1 means fastrnn is faster); "
          "'/ floor' = fastrnn's time / the same GEMMs in NumPy")
    print(table(data))
    if args.compare:
        print()
        print(compare(json.loads(Path(args.compare).read_text()), data))
    plot_path = Path(args.plot) if args.plot else out.with_suffix(".png")
    try:
        plot(data, plot_path)
        print(f"\nplot: {plot_path}")
        scaling_path = plot_path.with_name(plot_path.stem + "-scaling.png")
        if plot_scaling(data, scaling_path):
            print(f"scaling plot: {scaling_path}")
    except ImportError:
        print("\nno plot: matplotlib is not installed (pip install matplotlib)")
    print(f"saved {out}")
    return 0


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx", "avx2", "avx512f", "fma", "sse4_2", "neon")
                return [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    return []


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _entries(data):
    """Each implementation's entries; not the paired rounds' own (see bench/conftest.py)."""
    from bench.conftest import ROUND

    return [bench for bench in data["benchmarks"] if bench["extra_info"].get("impl") != ROUND]


def _medians(data):
    rows = {}
    for bench in _entries(data):
        info = bench["extra_info"]
        rows[(info["cell"], info["shape"], info["mode"], info["impl"])] = bench["stats"]["median"]
    return rows


def compare(old, new):
    """fastrnn's median now against the saved run, case by case."""
    before, after = _medians(old), _medians(new)
    lines = [f"{'case':<30}{'shape':<20}{'mode':<18}{'before ms':>10}{'now ms':>9}{'change':>9}"]
    for key, now in after.items():
        if key[3] != "fastrnn" or key not in before:
            continue
        change = now / before[key] - 1.0
        lines.append(f"{key[0]:<30}{key[1]:<20}{key[2]:<18}{before[key] * 1e3:>10.2f}"
                     f"{now * 1e3:>9.2f}{change:>+9.0%}")
    return "\n".join(lines)


def plot(data, path):
    """Speed-up of fastrnn over each anchor, per case, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = _medians(data)
    cases = sorted({k[:3] for k in med if k[3] == "fastrnn" and not k[0].startswith("scan")
                    and not k[0].endswith("(scaling)")})
    anchors = [a for a in ("keras", "torch") if any(k[3] == a for k in med)]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(cases) + 1.5))
    height = 0.8 / max(len(anchors), 1)
    for n, anchor in enumerate(anchors):
        ys, xs = [], []
        for i, case in enumerate(cases):
            if case + (anchor,) in med:
                ys.append(i + n * height)
                xs.append(med[case + (anchor,)] / med[case + ("fastrnn",)])
        ax.barh(ys, xs, height=height, label=f"vs {anchor}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))])
    ax.set_yticklabels([" ".join(c).strip() for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of fastrnn (anchor's median time / fastrnn's), log scale")
    ax.set_title(f"fastrnn on {machine()}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shape_numbers(shape):
    return {part[0]: int(part[1:]) for part in shape.split()}


def plot_scaling(data, path):
    """Time against T and against H (log-log), one line per implementation.

    Returns False (and writes nothing) when the run has no scaling cases."""
    med = _medians(data)
    cells = sorted({k[0] for k in med if k[0].endswith("(scaling)")})
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.test_scaling import H_FIXED, T_FIXED

    fig, axes = plt.subplots(len(cells), 2, figsize=(10, 3.6 * len(cells)), squeeze=False)
    names = {"keras": "Keras (minGRU: Dense + tf loop)", "torch": "torch (minGRU: log-space)",
             "floor": "GEMM floor", "fastrnn": "fastrnn"}
    for row, cell in zip(axes, cells):
        for ax, (axis, fixed_axis, fixed) in zip(row, (("T", "H", H_FIXED), ("H", "T", T_FIXED))):
            for impl in ("fastrnn", "keras", "torch", "floor"):
                points = sorted((_shape_numbers(k[1])[axis], v * 1e3) for k, v in med.items()
                                if k[0] == cell and k[3] == impl
                                and _shape_numbers(k[1])[fixed_axis] == fixed)
                if points:
                    ax.plot(*zip(*points), marker="o", label=names[impl])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel("forward+backward, ms")
            ax.set_title(f"{cell.split()[0]}: B16 I64, {fixed_axis}={fixed}, against {axis}",
                         fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(f"fastrnn on {machine()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
