"""ServiceTable bookkeeping: what changed between two tables, and the endpoint count, without a
whole-table walk when one table descends from the other."""

import random

from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import LINEAGE, ServiceTable, changed_keys


def svc(i: int, endpoints: int) -> Service:
    return Service(f"s{i}", ports=(ServicePort(80),), cluster_ips=(f"10.96.1.{i}",),
                   endpoints=tuple(Endpoint(f"10.244.{i}.{k + 1}") for k in range(endpoints)))  # fmt: skip


def brute(old: ServiceTable, new: ServiceTable) -> set:
    keys = set(old.services) | set(new.services)
    return {k for k in keys if old.services.get(k) != new.services.get(k)}


def test_changed_keys_and_endpoint_count_follow_any_history():
    rng = random.Random(7)
    history = [ServiceTable.of(svc(i, rng.randrange(4)) for i in range(20))]
    for _ in range(2 * LINEAGE):
        t = history[-1]
        puts = [svc(rng.randrange(30), rng.randrange(4)) for _ in range(rng.randrange(3))]
        deletes = [("default", f"s{rng.randrange(30)}") for _ in range(rng.randrange(2))]
        history.append(t.replace(puts, deletes))
    for i, old in enumerate(history):
        for new in history[i:]:
            assert changed_keys(old, new) == brute(old, new)  # near: from the lineage; far: by comparison
            assert changed_keys(new, old) == brute(new, old)
    for t in history:
        assert t.endpoint_count() == sum(len(s.endpoints) for s in t)


def test_a_put_of_an_equal_service_is_no_change():
    t = ServiceTable.of([svc(1, 2)])
    assert changed_keys(t, t.replace([svc(1, 2)])) == set()
    assert changed_keys(t, t.replace(deletes=[("default", "nope")])) == set()


def test_a_new_table_leaves_the_old_one_as_it_was_and_iterates_in_key_order():
    old = ServiceTable.of(svc(i, 1) for i in (5, 3, 9))
    new = old.replace([svc(4, 2), svc(3, 3)], [("default", "s9")])
    assert [s.name for s in old] == ["s3", "s5", "s9"] and old.get("default", "s3").endpoints == svc(3, 1).endpoints
    assert [s.name for s in new] == ["s3", "s4", "s5"] and len(new.get("default", "s3").endpoints) == 3
    assert (old.endpoint_count(), new.endpoint_count()) == (3, 6)
