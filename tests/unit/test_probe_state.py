"""The readiness probe state machine on a fake clock: thresholds, initial delay, first success, the
bound on leaving, the spread of first probes and the jitter."""

import random

import pytest

from svcdns.pod import ContainerPort, Pod, Probe
from svcdns.probe.state import JITTER, first, observe, reconcile, verdict


def run(probe, healthy, until, spread=0.5, ready=False, seed=1, probe_takes=lambda ok: 0.0):
    """Probe on a fake clock from 0 to ``until``: ``healthy(t)`` says whether the server answers at t;
    a failing probe takes ``probe_takes(False)`` seconds to report. Returns (time, ready) at every
    result, and the states' ready changes."""
    rng = random.Random(seed)
    state = first(probe, 0.0, spread, ready=ready)
    results, changes = [], []
    while state.due <= until:
        started = state.due
        ok = healthy(started)
        done = started + probe_takes(ok)
        new = observe(state, ok, "" if ok else "connection refused", started, rng.random())
        if new.ready != state.ready:
            changes.append((done, new.ready))
        results.append((done, new.ready))
        state = new
    return results, changes


DEFAULT = Probe("tcpSocket", 8080)


def test_defaults_are_kubernetes():
    assert (DEFAULT.initial_delay, DEFAULT.period, DEFAULT.timeout, DEFAULT.success_threshold,
            DEFAULT.failure_threshold) == (0, 10, 1, 1, 3)  # fmt: skip


def test_not_ready_until_the_first_success():
    state = first(DEFAULT, 100.0, 0.0)
    assert not state.ready
    for _ in range(5):
        state = observe(state, False, "connection refused", state.due, 0.5)
        assert not state.ready and state.reason == "connection refused"
    state = observe(state, True, "", state.due, 0.5)
    assert state.ready and state.reason == "" and state.failures == 0


def test_success_threshold_counts_consecutive_successes():
    probe = Probe("tcpSocket", 80, success_threshold=3)
    state = first(probe, 0.0, 0.0)
    for ok in (True, True, False, True, True):
        state = observe(state, ok, "x", state.due, 0.0)
        assert not state.ready
    assert observe(state, True, "", state.due, 0.0).ready


def test_leaves_after_failure_threshold_failures_and_one_failure_is_not_enough():
    state = observe(first(DEFAULT, 0.0, 0.0), True, "", 0.0, 0.0)
    for _ in range(2):
        state = observe(state, False, "HTTP 503", state.due, 0.0)
        assert state.ready
    state = observe(state, True, "", state.due, 0.0)  # a success resets the count
    for _ in range(2):
        state = observe(state, False, "HTTP 503", state.due, 0.0)
    assert state.ready
    assert not observe(state, False, "HTTP 503", state.due, 0.0).ready


@pytest.mark.parametrize("takes", [0.0, 1.0], ids=["refused at once", "hangs until the timeout"])
@pytest.mark.parametrize("seed", range(20))
def test_leaves_within_failure_threshold_periods_plus_timeout_and_returns(seed, takes):
    dies, back = 57.3 + seed, 200.0 + seed
    healthy = lambda t: not dies <= t < back  # noqa: E731
    _, changes = run(DEFAULT, healthy, 400, spread=random.Random(seed).random(), seed=seed,
                     probe_takes=lambda ok: 0.0 if ok else takes)  # fmt: skip
    (ready_at, up), (left_at, down), (back_at, again) = changes
    assert (up, down, again) == (True, False, True)
    bound = DEFAULT.failure_threshold * DEFAULT.period + DEFAULT.timeout
    assert dies < left_at <= dies + bound, f"left {left_at - dies:.2f} s after the server died; bound {bound} s"
    assert back < back_at <= back + DEFAULT.period * DEFAULT.success_threshold


def test_initial_delay_and_first_probe_within_the_first_period():
    probe = Probe("tcpSocket", 80, initial_delay=30)
    assert first(probe, 100.0, 0.0).due == 130.0
    assert 130.0 <= first(probe, 100.0, 0.999).due < 140.0


def test_first_probes_of_many_pods_spread_over_the_period():
    rng = random.Random(7)
    dues = [first(DEFAULT, 0.0, rng.random()).due for _ in range(10_000)]
    per_second = [sum(1 for d in dues if s <= d < s + 1) for s in range(10)]
    assert all(800 < n < 1200 for n in per_second), per_second


def test_jitter_only_shortens_an_interval_and_spreads_it():
    state = first(DEFAULT, 0.0, 0.0)
    rng = random.Random(3)
    intervals = [observe(state, True, "", 0.0, rng.random()).due for _ in range(1000)]
    assert all(DEFAULT.period * (1 - JITTER) <= i <= DEFAULT.period for i in intervals)
    assert max(intervals) - min(intervals) > DEFAULT.period * JITTER * 0.9


def test_reconcile_keeps_state_restarts_on_a_changed_probe_and_forgets_the_gone():
    a = Pod("a", ips=("10.0.0.1",), readiness_probes=(DEFAULT,))
    b = Pod("b", ips=("10.0.0.2",), readiness_probes=(DEFAULT,))
    plain = Pod("c", ips=("10.0.0.3",))
    states = reconcile({}, [a, b, plain], 0.0, lambda: 0.5, resumed={b.key: True})
    ka, kb = (*a.key, 0), (*b.key, 0)
    assert set(states) == {ka, kb}
    assert not states[ka].ready and states[kb].ready  # b's stored status says ready: a restart resumes it
    assert states[ka].due == 5.0
    ready_a = observe(states[ka], True, "", 5.0, 0.0)
    states = reconcile({**states, ka: ready_a}, [a, b], 6.0, lambda: 0.5)
    assert states[ka] is ready_a
    faster = Pod("a", ips=("10.0.0.1",), ports=(ContainerPort(80, "http"),), readiness_probes=(Probe("tcpSocket", "http", period=2),))
    states = reconcile(states, [faster], 7.0, lambda: 0.5)
    assert set(states) == {ka} and states[ka].ready and states[ka].due == 8.0


def test_a_pod_with_several_probes_is_ready_only_when_every_one_passes():
    app, side = Probe("tcpSocket", 80, container="app"), Probe("exec", command=("true",), container="side")
    pod = Pod("web", ips=("10.0.0.1",), ready=False, readiness_probes=(app, side))
    states = reconcile({}, [pod], 0.0, lambda: 0.5)
    assert set(states) == {("default", "web", 0), ("default", "web", 1)}
    a, b = states[("default", "web", 0)], states[("default", "web", 1)]
    assert verdict([a, b]) == (False, "")  # neither probed yet
    a = observe(a, True, "", 5.0, 0.0)
    b = observe(b, False, "exit status 1", 5.0, 0.0)
    assert verdict([a, b]) == (False, "container side: exit status 1")
    b = observe(b, True, "", 15.0, 0.0)
    assert verdict([a, b]) == (True, "")
    a = observe(observe(observe(a, False, "connection refused", 15.0, 0.0), False, "connection refused", 25.0, 0.0),
                False, "connection refused", 35.0, 0.0)  # fmt: skip
    assert verdict([a, b]) == (False, "container app: connection refused")
    assert verdict([observe(first(DEFAULT, 0.0, 0.0), False, "HTTP 503", 0.0, 0.0)]) == (False, "HTTP 503")
