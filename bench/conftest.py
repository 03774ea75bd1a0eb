import time

import pytest


def _rounds(fn, budget_s):
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(5, min(50, int(budget_s / max(once, 1e-6))))


@pytest.fixture
def run_benchmark(benchmark, request):
    """Warm up (JIT, tf.function tracing), then time `fn` for about the budget."""
    budget = float(request.config.getoption("--bench-budget"))

    def run(fn, **info):
        fn()  # compile / trace outside the timed region
        benchmark.extra_info.update(info)
        benchmark.pedantic(fn, rounds=_rounds(fn, budget), iterations=1, warmup_rounds=1)

    return run


def pytest_addoption(parser):
    parser.addoption("--bench-budget", default="0.4",
                     help="seconds of timed rounds per case (at least 5 rounds)")
