"""The etcd registry (etcd v3, via aetcd): one view of the Services shared by every host's agent.

- :mod:`.url`: the ``etcd://`` URL and its options;
- :mod:`.client`: every aetcd / gRPC detail (the loop thread, failover, token renewal, timeouts);
- :mod:`.keys`: the key schema; :mod:`.state`: the pure state machine from keys to a ServiceTable;
- :mod:`.lease`: this node's lease; :mod:`.nodes`: what `svcdns node` reads and removes;
- :mod:`.registry`: :class:`EtcdRegistry`, snapshots and transactional writes;
- :mod:`.watch`: :class:`EtcdWatch`, the snapshot-then-changes stream, resumed after any break.
"""

from .registry import EtcdRegistry
from .url import EtcdOptions, parse_url
from .watch import EtcdWatch

__all__ = ["EtcdOptions", "EtcdRegistry", "EtcdWatch", "parse_url"]
