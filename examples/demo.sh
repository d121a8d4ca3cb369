#!/usr/bin/env bash
# The README's first command: set up svcdns, then show it working. Needs root on Debian 12.
# It creates everything it uses in a temporary directory (and, once the dataplane is in, in network
# namespaces of its own) and removes it on exit; the host's own network namespace is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python examples/demo.py "$@"
