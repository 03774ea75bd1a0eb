import time

import pytest


def _rounds(fn, budget_s):
    # At least 5 timed rounds (3 in --quick runs, whose budget is under 0.3 s:
    # there only calls slower than budget / 3 are affected, the anchors' long cases).
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    least = 3 if budget_s < 0.3 else 5
    return max(least, min(50, int(budget_s / max(once, 1e-6))))


@pytest.fixture
def run_benchmark(benchmark, request):
    """Warm up (JIT, tf.function tracing), then time `fn` for about the budget."""
    budget = float(request.config.getoption("--bench-budget"))

    def run(fn, **info):
        fn()  # compile / trace outside the timed region
        benchmark.extra_info.update(info)
        # _rounds' own timing call is the warm-up round: two untimed calls in all.
        benchmark.pedantic(fn, rounds=_rounds(fn, budget), iterations=1, warmup_rounds=0)

    return run


def pytest_addoption(parser):
    parser.addoption("--bench-budget", default="0.4",
                     help="seconds of timed rounds per case (at least 5 rounds)")
