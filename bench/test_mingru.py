"""minGRU: the kernels beside the Dense-gates + tf-loop layer, the torch log-space scan
and the floor; the linear scan's two methods against T; a next-word language model."""

import os

import numpy as np
import pytest

from bench.cases import tf_forward_backward
from bench.test_kernels import anchors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# DESIGN.md's four shapes.
SHAPES = {"B32 T15 I1 H45": (32, 15, 1, 45), "B128 T17 I100 H150": (128, 17, 100, 150),
          "B64 T100 I128 H256": (64, 100, 128, 256), "B16 T1024 I64 H128": (16, 1024, 64, 128)}


def _inputs(shape):
    B, T, I, H = shape
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, T, I)).astype("float32"),
            (rng.standard_normal((I, 2 * H)) / np.sqrt(I)).astype("float32"),
            np.zeros(2 * H, "float32"), rng.standard_normal((B, T, H)).astype("float32"))


def mingru_case(impl, shape, mode="forward+backward"):
    B, T, I, H = shape
    x, W, b, d_out = _inputs(shape)
    if impl == "fastrnn":
        from fastrnn import kernels

        if mode == "forward":
            return lambda: kernels.mingru_forward(x, None, W, b)

        def run():
            _, _, saved = kernels.mingru_forward(x, None, W, b)
            return kernels.mingru_backward(saved, d_out, None)
        return run
    if impl == "floor":
        # The three GEMMs and one pass over the gate-sized array each way.
        x2, d2 = x.reshape(B * T, I), np.ones((B * T, 2 * H), "float32")
        gates, dx, spare = np.empty((B * T, 2 * H), "float32"), np.empty((B * T, I), "float32"), \
            np.empty((B * T, 2 * H), "float32")

        def run():
            np.matmul(x2, W, out=gates)
            np.copyto(spare, gates)
            if mode == "forward":
                return
            np.copyto(spare, d2)
            np.matmul(d2, W.T, out=dx)
            return x2.T @ d2
        return run
    if impl == "tf loop":
        import tensorflow as tf

        from bench.mingru_anchors import DenseLoopMinGRU

        layer = DenseLoopMinGRU(H, return_sequences=True)
        layer.build((B, T, I))
        if mode == "forward":
            xt = tf.constant(x)
            return tf.function(lambda: layer(xt))
        return tf_forward_backward(layer, tf.constant(x), tf.constant(d_out))
    if impl == "torch log-space":
        import torch

        from bench.mingru_anchors import torch_log_space_mingru

        xt = torch.from_numpy(x).requires_grad_(True)
        Wt = torch.from_numpy(W).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        dt = torch.from_numpy(d_out)

        if mode == "forward":
            def forward():
                with torch.no_grad():
                    return torch_log_space_mingru(xt, Wt, bt)
            return forward

        def run():
            xt.grad = Wt.grad = bt.grad = None
            torch_log_space_mingru(xt, Wt, bt).backward(dt)
        return run
    raise ValueError(impl)


# The anchors' names in the table's columns.
NAMES = {"tf loop": "keras", "torch log-space": "torch"}


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_mingru(run_paired, benchmark, shape, mode):
    benchmark.group = f"mingru | {shape} | {mode}"
    fns = {NAMES.get(impl, impl): mingru_case(impl, SHAPES[shape], mode)
           for impl in anchors(["fastrnn", "tf loop", "torch log-space", "floor"])}
    run_paired(fns, cell="mingru", shape=shape, mode=mode)


@pytest.mark.parametrize("time", [64, 1024, 16384, 65536])
@pytest.mark.parametrize("batch", [1, 16])
def test_scan(run_paired, benchmark, batch, time):
    from fastrnn import kernels

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (batch, time, 128)).astype("float32")
    b = rng.standard_normal((batch, time, 128)).astype("float32")
    out = np.empty_like(a)
    benchmark.group = f"scan B{batch} T{time} H128"
    fns = {"fastrnn": lambda: kernels.linear_scan(a, b, method="sequential"),
           "blelloch": lambda: kernels.linear_scan(a, b, method="blelloch"),
           "copy": lambda: np.copyto(out, b)}  # the floor: moving the same bytes once
    run_paired(fns, cell=f"scan B{batch} H128", shape=f"T{time}", mode="forward")


LM_SEQUENCES = 512  # 16 batches of 32 sequences of 32 tokens per timed epoch


def test_lm_epoch(run_paired, benchmark):
    """One epoch of next-word training (Embedding(mask_zero) -> minGRU(128) -> Dense)."""
    from bench.lm import corpus, paired_models

    x, y, vocab = corpus(max_sequences=LM_SEQUENCES)
    nets = dict(zip(["fastrnn", "keras"], paired_models(vocab_size=vocab)))
    losses = {name: [] for name in nets}

    def epoch(name):
        history = nets[name].fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        losses[name].append(history.history["loss"][-1])

    benchmark.group = "lm minGRU(128) epoch"
    extra = run_paired({name: (lambda name=name: epoch(name)) for name in nets},
                       cell="lm minGRU(128)", shape=f"{LM_SEQUENCES}x32 tokens", mode="epoch")
    for name in nets:  # both models start from the same weights ("keras" is the tf loop)
        extra[name]["first_epoch_loss"] = losses[name][0]
