"""One etcd client is shared by the agent's reads, its watch and its node lease: a failover made by
one of them (the lease refresh finding no leader, say) closes the connection under the others' calls
in flight. Those calls must move to the next member too, not end in a CancelledError (which, in
the agent's first read, was an "internal error" exit: seen in bench/fleet.py at 100 agents)."""

import asyncio

from svcdns.registry.etcd.client import EtcdClient
from svcdns.registry.etcd.url import parse_url
from svcdns.testing.etcd import EtcdServer


def test_a_read_in_flight_when_another_task_fails_over_moves_to_the_next_member(tmp_path):
    with EtcdServer(tmp_path / "cluster", members=3) as cluster:
        client = EtcdClient(parse_url(cluster.url))
        try:
            client.run(client.put(b"/t/a", b"1"))
            cluster.pause(cluster.member(client.endpoint))  # hung: the read below waits on it

            async def read_while_another_task_fails_over():
                read = asyncio.ensure_future(client.range(b"/t/"))
                await asyncio.sleep(0.5)
                await client.next_member()
                return await read

            _, kvs = client.run(read_while_another_task_fails_over(), 30)
            assert [(kv.key, kv.value) for kv in kvs] == [(b"/t/a", b"1")]
        finally:
            for i in range(3):
                cluster.pause(i, False)
            client.close()
