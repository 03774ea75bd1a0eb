"""A next-word language model on English text every Python install has offline:
the pydoc topics (`pydoc_data.topics`), tokenized into words and punctuation."""

import re
from collections import Counter

import numpy as np


def corpus(seq_len=32, vocab_size=2000, max_sequences=None, seed=0):
    """Returns (x, y, vocab_size): x [N, seq_len] token ids with 0 = padding (a third
    of the rows end early, so masks matter), y the next token at every position."""
    from pydoc_data.topics import topics

    words = re.findall(r"[a-z_]+|[0-9]+|[^\sa-z0-9_]", " ".join(topics.values()).lower())
    ranked = [w for w, _ in Counter(words).most_common(vocab_size - 2)]
    index = {w: i + 2 for i, w in enumerate(ranked)}  # 0 padding, 1 out of vocabulary
    ids = np.array([index.get(w, 1) for w in words], np.int32)
    n = (len(ids) - 1) // seq_len
    if max_sequences:
        n = min(n, max_sequences)
    x = ids[:n * seq_len].reshape(n, seq_len).copy()
    y = ids[1:n * seq_len + 1].reshape(n, seq_len).copy()
    rng = np.random.default_rng(seed)
    for row in rng.choice(n, n // 3, replace=False):
        cut = rng.integers(seq_len // 4, seq_len)
        x[row, cut:] = 0
        y[row, cut:] = 0
    return x, y, vocab_size


def model(rnn_layer, vocab_size, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((None,), dtype="int32"),
                            keras.layers.Embedding(vocab_size, 64, mask_zero=True),
                            rnn_layer, keras.layers.Dense(vocab_size)])
    net.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return net


def paired_models(units=128, vocab_size=2000):
    """fastrnn.MinGRU and the Dense-gates + tf-loop minGRU with the same weights."""
    import fastrnn
    from bench.mingru_anchors import DenseLoopMinGRU

    fast = model(fastrnn.MinGRU(units, return_sequences=True), vocab_size)
    loop = model(DenseLoopMinGRU(units, return_sequences=True), vocab_size)
    loop.set_weights(fast.get_weights())  # same layout: kernel [64, 2H] = z | h~, bias [2H]
    return fast, loop
