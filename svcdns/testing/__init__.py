"""Helpers for tests, benchmarks and the demo: the namespace lab (:mod:`.lab`), a throwaway etcd
server (:mod:`.etcd`) and a tiny pod server (:mod:`.podserver`). No production module imports this
package (pyroute2 ships its fixtures the same way)."""
