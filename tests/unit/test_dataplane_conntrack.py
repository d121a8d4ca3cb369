"""Which UDP VIP:ports the conntrack step looks at after a sync: every entry that may be pinned to an
endpoint that went, or to "no endpoint", and no dump of the conntrack table when none can be."""

from svcdns.dataplane.conntrack import sync_expectations
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable, changed_keys

DNS = ("10.96.0.10", 53)


def dns(*addresses):
    return Service("dns", ports=(ServicePort(53, "UDP"),), cluster_ips=(DNS[0],),
                   endpoints=tuple(Endpoint(a) for a in addresses))  # fmt: skip


def step(before, after):
    old, new = ServiceTable.of([before]), ServiceTable.of([after])
    return sync_expectations(old, new, changed_keys(old, new), "IPv4")


def test_an_endpoint_that_went_is_checked():
    assert step(dns("10.244.1.2", "10.244.2.2"), dns("10.244.2.2")) == {DNS: {("10.244.2.2", 53)}}


def test_an_endpoint_replaced_is_checked():
    assert step(dns("10.244.1.2"), dns("10.244.2.2")) == {DNS: {("10.244.2.2", 53)}}


def test_the_first_endpoint_is_checked_entries_to_the_rejection_go():
    assert step(dns(), dns("10.244.1.2")) == {DNS: {("10.244.1.2", 53)}}


def test_an_endpoint_added_to_those_there_needs_no_conntrack_dump():
    assert step(dns("10.244.1.2"), dns("10.244.1.2", "10.244.2.2")) == {}


def test_a_port_that_went_loses_every_entry():
    gone = Service("dns", ports=(ServicePort(54, "UDP"),), cluster_ips=(DNS[0],), endpoints=(Endpoint("10.244.1.2"),))
    assert step(dns("10.244.1.2"), gone) == {DNS: set(), ("10.96.0.10", 54): {("10.244.1.2", 54)}}


def test_a_full_sync_checks_every_port_whatever_it_had():
    table = ServiceTable.of([dns("10.244.1.2", "10.244.2.2")])
    assert sync_expectations(table, table, None, "IPv4") == {DNS: {("10.244.1.2", 53), ("10.244.2.2", 53)}}
