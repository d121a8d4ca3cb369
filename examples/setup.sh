#!/usr/bin/env bash
# Installs what svcdns needs on a Debian 12 machine, as root: the system packages, then a virtual
# environment in .venv with svcdns and its Python dependencies. Idempotent; both README commands
# (the demo and the test suite) start with it. `setup.sh test` adds the test extras, `setup.sh bench`
# the benchmarks' baselines.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-pip iproute2 nftables iptables conntrack dnsutils curl procps)
# the tests start throwaway etcd servers of their own (loopback ports, temporary data directories)
[ "${1:-}" = "test" ] && APT_PACKAGES+=(etcd-server openssl systemd systemd-container debootstrap)
# the benchmarks' baselines (bench/dns.py runs them in a namespace of its own, never as services)
[ "${1:-}" = "bench" ] && APT_PACKAGES+=(etcd-server dnsperf dnsmasq-base unbound)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  # packages such as unbound would start a system-wide service on install: not here
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "test" ] || [ "${1:-}" = "bench" ] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
