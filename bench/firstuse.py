"""A fresh process's first use of fastrnn: import, build, first training steps.

Run as `python -m bench.firstuse [--keras] [--cell NAME]` (bench/test_firstuse.py
runs it in subprocesses, cold with an empty NUMBA_CACHE_DIR and warm with the same
one again). Prints one JSON line: seconds for

- "import": `import fastrnn` and resolving its layers (which imports TensorFlow
  and Keras; with --keras, `import keras` alone),
- "build": the model (Input(15, 1) -> LSTM(16, return_sequences) -> GRU(16) ->
  Dense(1), mse, adam; with --cell NAME, one layer of that cell instead:
  Input(15, 1) -> NAME(16) -> Dense(1), NAME one of GRU, LSTM, SimpleRNN, MinGRU)
  built and compiled,
- "first step": its first train_on_batch at B32 (tracing, and for fastrnn the
  kernels compiled or loaded from Numba's cache and the native ops registered),
- "second step": the next train_on_batch,

and "routes", the routes fastrnn's layers took.

`python -m bench.firstuse split` instead compiles the native route piece by piece
in this process (FASTRNN_COMPILE_ASIDE=0: no helper process) and prints, per piece,
its seconds and how they split between Numba's type inference, LLVM (code
generation and optimization) and the rest (lowering, cache I/O, Python), as
Numba's event recorders measure them: run it with an empty NUMBA_CACHE_DIR.
"""

import json
import sys
import time

CELLS = ("GRU", "LSTM", "SimpleRNN", "MinGRU")


def _union(intervals):
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _spans(buffer, kind, name=None):
    """[(start, end)] of the events of `kind` (run_pass events of pass `name`)."""
    starts, spans = {}, []
    for timestamp, event in buffer:
        if name is not None and not str((event.data or {}).get("name", "")).startswith(name):
            continue
        key = id(event.data) if event.data is not None else kind
        if event.is_start:
            starts.setdefault(key, []).append(timestamp)
        elif starts.get(key):
            spans.append((starts[key].pop(), timestamp))
    return spans


def compile_split():
    """{piece: {"seconds", "typing", "llvm", "other"}} of the native route compiled
    piece by piece here: the op shell, then each cell's cores (float32)."""
    import os

    os.environ["FASTRNN_COMPILE_ASIDE"] = "0"
    from numba.core import event

    import fastrnn  # noqa: F401

    pieces = [("op shell", lambda: __import__("fastrnn.ops.native._shell"))]
    for name in ("gru", "lstm", "simple_rnn", "mingru"):
        pieces.append((f"{name} cores", lambda name=name: _native_ops(name)))
    split = {}
    for piece, run in pieces:
        with event.install_recorder("numba:llvm_lock") as llvm, \
                event.install_recorder("numba:run_pass") as passes:
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        llvm_spans = _spans(llvm.buffer, "llvm")
        typing_spans = _spans(passes.buffer, "pass", "nopython_type_inference")
        llvm_s, both = _union(llvm_spans), _union(llvm_spans + typing_spans)
        # typing that is not LLVM (a callee compiled during its caller's typing)
        split[piece] = dict(seconds=seconds, typing=both - llvm_s, llvm=llvm_s,
                            other=max(0.0, seconds - both))
    return split


def _native_ops(name):
    import numpy as np

    from fastrnn.ops import native

    native.ops(name, np.float32)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["split"]:
        print(json.dumps(compile_split()), flush=True)
        return 0
    use_keras = "--keras" in argv
    cell = argv[argv.index("--cell") + 1] if "--cell" in argv else None
    if cell is not None and cell not in CELLS:
        raise SystemExit(f"--cell must be one of {CELLS}, got {cell!r}")
    if use_keras and cell == "MinGRU":
        raise SystemExit("Keras has no MinGRU layer")
    times = {}
    start = time.perf_counter()
    if use_keras:
        import keras

        layers = keras.layers
    else:
        import fastrnn as layers
        import keras

        layers.LSTM  # resolving the layers imports TensorFlow and Keras
    times["import"] = time.perf_counter() - start

    import numpy as np

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    if cell is None:
        recurrent = [layers.LSTM(16, return_sequences=True), layers.GRU(16)]
    else:
        recurrent = [getattr(layers, cell)(16)]
    model = keras.Sequential([keras.Input((15, 1))] + recurrent + [keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 15, 1)).astype("float32")
    y = rng.standard_normal((32, 1)).astype("float32")
    times["build"] = time.perf_counter() - start
    for step in ("first step", "second step"):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y)
        times[step] = time.perf_counter() - start
    routes = []
    if not use_keras:
        from fastrnn import _routes

        routes = sorted({route for _, _, route, _ in _routes.notes()})
    print(json.dumps(dict(times, loss=float(loss), routes=routes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
