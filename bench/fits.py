"""Models trained as users train them: `model.fit` on data as users have it.

`train_on_batch` on fixed arrays (bench/test_layers.py) traces a step whose batch
size is known. A real fit mostly is not so: Keras traces its step with batch None
whenever the rows are not a whole number of batches, or the data is a tf.data
pipeline batched without drop_remainder (`timeseries_dataset_from_array`,
`Dataset.batch`). Each model here is fitted on three kinds of data:

- "static": N = STEPS * B rows of NumPy arrays (the step's batch is known);
- "dynamic": N = STEPS * B + 1 rows (the step is traced with batch None, and the
  epoch ends on a one-row batch);
- "tf.data": the dynamic rows as a tf.data pipeline, `batch(B)` without
  drop_remainder (the weather model: `keras.utils.timeseries_dataset_from_array`,
  as its keras-io example builds it).

A fit step is the time from one batch's end to the next's (a callback's
`on_train_batch_end`): what a user's epoch is made of, data iteration included.
The first step of an epoch (the iterator's start) and the last, partial one are
left out of the samples.
"""

import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STEPS = 8        # full batches per epoch
DATA = ("static", "dynamic", "tf.data")

# name: (batch, time, features, layer spec, head): the two keras-io shapes (character
# generation, weather forecasting), two GRU shapes, an LSTM with Keras' per-gate
# recurrent dropout (implementation 1) and a generic RNN over a stock cell.
MODELS = {
    "char LSTM(128) B128 T40 I29": (128, 40, 29, ("lstm", 128, {}), "softmax"),
    "weather LSTM(32) B256 T120 I7": (256, 120, 7, ("lstm", 32, {}), "mse"),
    "GRU(128) B64 T100 I32": (64, 100, 32, ("gru", 128, {}), "mse"),
    "GRU(256) B32 T15 I1": (32, 15, 1, ("gru", 256, {}), "mse"),
    "LSTM(64, dropout=0.2, recurrent_dropout=0.2) B64 T50 I16":
        (64, 50, 16, ("lstm", 64, dict(dropout=0.2, recurrent_dropout=0.2)), "mse"),
    "GRU(64, dropout=0.2, recurrent_dropout=0.2) B64 T50 I16":
        (64, 50, 16, ("gru", 64, dict(dropout=0.2, recurrent_dropout=0.2)), "mse"),
    "RNN(LSTMCell(64)) B64 T50 I16": (64, 50, 16, ("rnn_lstm_cell", 64, {}), "mse"),
}


def recurrent_layer(impl, spec):
    """The model's recurrent layer: Keras' own ("keras") or fastrnn's ("fastrnn")."""
    import keras

    import fastrnn

    cell, units, kwargs = spec
    if cell == "rnn_lstm_cell":
        rnn = keras.layers.RNN if impl == "keras" else fastrnn.RNN
        return rnn(keras.layers.LSTMCell(units))
    classes = ({"lstm": keras.layers.LSTM, "gru": keras.layers.GRU} if impl == "keras"
               else {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU})
    return classes[cell](units, **kwargs)


def model(impl, name, seed=0):
    """The compiled model `name` with impl's recurrent layer."""
    import keras

    batch, time_, features, spec, head = MODELS[name]
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((time_, features)), recurrent_layer(impl, spec)]
    if head == "softmax":
        layers.append(keras.layers.Dense(features, activation="softmax"))
        loss = "categorical_crossentropy"
    else:
        layers.append(keras.layers.Dense(1))
        loss = "mse"
    m = keras.Sequential(layers)
    m.compile(optimizer="adam" if head == "mse" else keras.optimizers.RMSprop(0.01), loss=loss)
    return m


def data(name, kind, seed=0):
    """fit's data for model `name`: (x, y) arrays ("static", "dynamic") or a dataset."""
    import keras
    import tensorflow as tf

    batch, time_, features, _, head = MODELS[name]
    rng = np.random.default_rng(seed)
    rows = STEPS * batch + (0 if kind == "static" else 1)
    if name.startswith("weather") and kind == "tf.data":
        # keras-io's weather example: one long series, windows of `time_` steps.
        # `rows` windows: a window of `time_` steps starts at each of the first `rows`
        # steps, its target the series' second column `time_` steps later.
        series = rng.standard_normal((rows + 2 * time_ - 1, features)).astype("float32")
        return keras.utils.timeseries_dataset_from_array(
            series[:-time_], series[time_:, 1], sequence_length=time_, batch_size=batch,
            shuffle=False)
    if head == "softmax":
        x = np.eye(features, dtype="float32")[rng.integers(0, features, (rows, time_))]
        y = np.eye(features, dtype="float32")[rng.integers(0, features, rows)]
    else:
        x = rng.standard_normal((rows, time_, features)).astype("float32")
        y = rng.standard_normal((rows, 1)).astype("float32")
    if kind == "tf.data":
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return x, y


def step_times():
    """A Keras callback whose `ends` are the times of one epoch's batch ends."""
    import keras

    class StepTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepTimes()


def fit_epoch(impl, name, kind):
    """A callable: one epoch of model `name`'s fit on `kind` data -> its full steps'
    durations (seconds), the epoch's first step and its partial last one left out."""
    m = model(impl, name)
    batch = MODELS[name][0]
    d = data(name, kind)
    args = dict(x=d[0], y=d[1], batch_size=batch) if isinstance(d, tuple) else dict(x=d)
    times = step_times()

    def run():
        m.fit(**args, epochs=1, verbose=0, callbacks=[times])
        steps = np.diff(times.ends)        # step k's duration is ends[k] - ends[k - 1]
        return list(steps[:STEPS - 1])     # full steps 1 .. STEPS - 1

    return run
