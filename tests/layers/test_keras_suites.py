"""Keras' own GRU and SimpleRNN test suites, run with fastrnn's layers swapped in.

The test modules ship inside the keras wheel (keras/src/layers/rnn/*_test.py);
their methods look `layers.GRU` up at call time, so pointing the module's
`layers` at a proxy that answers fastrnn's classes runs Keras' published
figures (correctness, masking, initial state, statefulness, ...) against ours.
"""

import importlib

import pytest

import fastrnn


class _LayersProxy:
    def __init__(self, real, **overrides):
        self._real, self._overrides = real, overrides

    def __getattr__(self, name):
        return self._overrides.get(name, getattr(self._real, name))


def _suite(module_name, class_name, **overrides):
    try:
        module = importlib.import_module(f"keras.src.layers.rnn.{module_name}")
    except ImportError as error:  # pragma: no cover - depends on the keras wheel
        pytest.skip(f"keras' {module_name} is not installed with keras: {error}")
    base = getattr(module, class_name)

    class Suite(base):
        def setUp(self):
            super().setUp()
            self._saved_layers = module.layers
            module.layers = _LayersProxy(module.layers, **overrides)

        def tearDown(self):
            module.layers = self._saved_layers
            super().tearDown()

    Suite.__name__ = f"Fastrnn{class_name}"
    return Suite


TestKerasGRUSuite = _suite("gru_test", "GRUTest", GRU=fastrnn.GRU)
TestKerasSimpleRNNSuite = _suite("simple_rnn_test", "SimpleRNNTest", SimpleRNN=fastrnn.SimpleRNN)
TestKerasLSTMSuite = _suite("lstm_test", "LSTMTest", LSTM=fastrnn.LSTM)
# Bidirectional over each of them (its test_output_shape feeds int64 features).
TestKerasBidirectionalSuite = _suite("bidirectional_test", "SimpleRNNTest", GRU=fastrnn.GRU,
                                     LSTM=fastrnn.LSTM, SimpleRNN=fastrnn.SimpleRNN)
