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
"""

import json
import sys
import time

CELLS = ("GRU", "LSTM", "SimpleRNN", "MinGRU")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
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
