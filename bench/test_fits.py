"""model.fit as users run it (bench/fits.py): Keras and fastrnn, each on static,
dynamic and tf.data batches, all six fits of a model timed in the same rounds.

One round fits one epoch of each, in an order that rotates from round to round;
each epoch's full steps (its first and partial last left out) are that fit's
samples. The table (python -m bench) shows the medians, fastrnn against Keras on
the same data, and fastrnn's dynamic and tf.data steps against its static one.
"""

import pytest

from bench import fits
from bench.conftest import record_samples


def _rounds(budget_s):
    return 2 if budget_s < 0.3 else 4


@pytest.mark.parametrize("name", list(fits.MODELS))
def test_fit(benchmark, request, name):
    from fastrnn import _routes

    benchmark.group = f"fit {name}"
    budget = float(request.config.getoption("--bench-budget"))
    runs, routes = {}, {}
    for impl in ("keras", "fastrnn"):
        for kind in fits.DATA:
            seen = len(_routes.notes())
            run = fits.fit_epoch(impl, name, kind)
            run()  # traces and compiles outside the timed rounds
            runs[(impl, kind)] = run
            routes[(impl, kind)] = sorted({r for _, _, r, _ in _routes.notes()[seen:]})
    keys = list(runs)
    samples = {key: [] for key in keys}
    turn = [0]

    def one_round():
        k = turn[0] % len(keys)
        turn[0] += 1
        for key in keys[k:] + keys[:k]:
            samples[key].extend(runs[key]())

    rounds = _rounds(budget)
    benchmark.extra_info.update(cell=name, shape="", mode="fit", impl="paired round")
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    for (impl, kind), values in samples.items():
        extra = record_samples(request, benchmark, f"{impl} {kind}", values,
                               dict(cell=name, shape=kind, mode="fit", kind="fit"),
                               paired=True, paired_rounds=rounds)
        extra["impl"] = impl
        extra["routes"] = routes[(impl, kind)]
