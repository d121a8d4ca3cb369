"""The arithmetic bench/fleet.py prints: percentiles, "everywhere", the memory plan, the estimate."""

import math

import pytest

from svcdns.testing.fleet import Costs, estimate, everywhere, percentile, plan_sizes


def test_percentiles_are_measured_values_nearest_rank():
    values = [0.010 * k for k in range(1, 101)]  # 10 ms .. 1000 ms
    assert percentile(values, 50) == pytest.approx(0.50)
    assert percentile(values, 99) == pytest.approx(0.99)
    assert percentile(values, 100) == pytest.approx(1.00)
    assert percentile([0.3, 0.1, 0.2], 50) == 0.2  # unsorted input
    assert percentile([0.7], 99) == 0.7
    assert math.isnan(percentile([], 50))


def test_a_percentile_outside_0_to_100_is_refused_naming_it():
    with pytest.raises(ValueError, match="q must be within 0..100, not 101"):
        percentile([1.0], 101)


def test_a_change_is_everywhere_when_the_last_host_has_it_and_never_if_one_missed_it():
    assert everywhere([0.02, 0.05, 0.03]) == 0.05
    assert everywhere([0.02, None, 0.03]) is None
    assert everywhere([]) is None


def test_sizes_that_do_not_fit_in_memory_are_refused():
    plan = plan_sizes([10, 50, 100, 200], per_agent_mb=95, fixed_mb=500, available_mb=20_000)
    assert [(f.size, f.fits) for f in plan] == [(10, True), (50, True), (100, True), (200, False)]
    assert plan[2].needed_mb == pytest.approx(100 * 95 * 1.25 + 500)
    with pytest.raises(ValueError, match="per_agent_mb must be > 0, not 0"):
        plan_sizes([10], per_agent_mb=0, fixed_mb=0, available_mb=1)


def test_the_estimate_scales_per_agent_costs_above_etcds_own_floor():
    costs = Costs(agents=100, etcd_floor=0.04, etcd_cpu=0.14, keepalives_per_s=100.0, watchers=100,
                  change_cpu_ms=8.0, change_watchers=200)  # fmt: skip
    e = estimate(costs, 5000)
    assert e.change_cpu_ms == pytest.approx(8.0 / 200 * 5000)  # per watcher, one watcher per host
    assert e.watchers == 5000 and e.keepalives_per_s == pytest.approx(5000)
    assert e.etcd_idle_cores == pytest.approx(0.04 + 0.10 * 50)  # the floor is paid once
    with pytest.raises(ValueError, match="agents must be > 0"):
        estimate(Costs(0, 0, 0, 0, 0), 10)
