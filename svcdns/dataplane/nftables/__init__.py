"""svcdns's nftables backend: objects and the pure planner (:mod:`.ruleset`), the transaction and its
encoding, the netlink shell, the backend the agent drives, and a fake kernel for tests.

Deliberately empty: importing the pure planner must not load pyroute2.
"""
