"""Paired timing: every implementation of a case is timed in the same rounds.

This machine's speed drifts over minutes (the same call can take 0.3 ms in one
hour and 0.5 ms in the next), so timing each implementation in its own block of
rounds, seconds apart, makes the ratios between them drift too. Here one round
calls every implementation of the case in turn, so each sample of each
implementation is taken within moments of the others'.

Within a round each implementation gets one untimed call right before its
timed one: the libraries leave worker threads spinning after a call (OpenBLAS,
OpenMP in torch, Eigen's pool in TensorFlow), and whichever call comes next
pays for them. The untimed call absorbs that cost, so every timed call follows
a call of its own library, as it would in a user's training loop. The order
rotates from round to round.

pytest-benchmark times each whole round (one entry per case, impl "paired
round"); each implementation's own samples become entries of their own in the
JSON (`pytest_benchmark_update_json` below), with the statistics
pytest-benchmark computes for any benchmark.
"""

import time

import pytest
from pytest_benchmark.stats import Stats

ROUND = "paired round"
_ENTRIES = []  # each implementation's samples, added to the JSON at the end


def _rounds(round_s, budget_s, n_impls, most=50):
    """Rounds for about budget_s of rounds, at least two rotations (one in --quick
    runs, whose budget is under 0.3 s) and at most `most`, a whole number of rotations."""
    least = n_impls if budget_s < 0.3 else 2 * n_impls
    rounds = max(least, min(most, int(budget_s * n_impls / max(round_s, 1e-6))))
    return -(-rounds // n_impls) * n_impls


@pytest.fixture
def run_paired(benchmark, request):
    """Time each of `fns` ({impl: zero-argument callable}) in the same rounds.

    `info` (cell, shape, mode) goes into every entry's extra_info, with the
    implementation's name as `impl`. Returns {impl: extra_info dict}, so a test
    can add to one implementation's entry. `scale` multiplies the budget and the
    most rounds: for cheap cases whose table subtracts one implementation from
    another (differences of tens of microseconds need more samples)."""
    budget = float(request.config.getoption("--bench-budget"))

    def run(fns, scale=1, **info):
        names = list(fns)
        once = {}
        for name, fn in fns.items():
            fn()  # compile / trace outside the timed region
            start = time.perf_counter()
            fn()
            once[name] = time.perf_counter() - start
        samples = {name: [] for name in names}
        turn = [0]

        def one_round():
            k = turn[0] % len(names)
            turn[0] += 1
            for name in names[k:] + names[:k]:
                fns[name]()  # untimed: takes the cost of the previous library's threads
                start = time.perf_counter()
                fns[name]()
                samples[name].append(time.perf_counter() - start)

        rounds = _rounds(2 * sum(once.values()), budget * scale, len(names), most=50 * scale)
        benchmark.extra_info.update(info, impl=ROUND, impls=names)
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
        return {name: record_samples(request, benchmark, name, samples[name], info,
                                     paired=True, paired_rounds=rounds)
                for name in names}

    return run


def record_samples(request, benchmark, name, samples, info, paired=False, **options):
    """Add an entry for implementation `name` with these samples (seconds) to the JSON,
    with pytest-benchmark's statistics; returns its extra_info (info + impl), which the
    caller may still add to."""
    stats = Stats()
    for duration in samples:
        stats.update(duration)
    extra = dict(info, impl=name, paired=paired)
    _ENTRIES.append({"group": benchmark.group, "name": f"{request.node.name}[{name}]",
                     "fullname": f"{request.node.nodeid}[{name}]",
                     "params": None, "param": name, "extra_info": extra,
                     "options": dict(options, timer="perf_counter"),
                     "stats": dict(stats.as_dict(), data=list(stats.data))})
    return extra


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["benchmarks"].extend(_ENTRIES)


def pytest_addoption(parser):
    parser.addoption("--bench-budget", default="0.4",
                     help="seconds of timed calls per implementation and case (a case's rounds "
                          "run for about this times the number of implementations, twice over "
                          "with the untimed calls)")
