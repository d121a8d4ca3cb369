"""svcdns's iptables backend: the pure planner (:mod:`.rules`) and the iptables-restore shell
(:mod:`.backend`).

Deliberately empty: importing the pure planner must not start anything.
"""
