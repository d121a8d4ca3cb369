"""The README demo: ``bash examples/demo.sh`` (after setup) runs ``python -m svcdns.demo``.

It works in a temporary registry directory and shows what an operator does on day one: add
Services, add endpoints, read them back, and see a bad file rejected while the rest keeps working.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    proc = subprocess.run(argv, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} failed with exit code {proc.returncode}")
    return proc


def main() -> int:
    svcdns = [sys.executable, "-m", "svcdns"]
    with tempfile.TemporaryDirectory(prefix="svcdns-demo-") as registry:
        os.environ["SVCDNS_REGISTRY"] = registry
        step(f"A registry directory: {registry}")
        step("Services get stable VIPs")
        sh(*svcdns, "service", "add", "web", "--port", "http:80:8080/tcp", "--port", "dns:53/udp")
        sh(*svcdns, "service", "add", "db", "--headless", "--port", "5432/tcp")
        sh(*svcdns, "service", "add", "ext", "--external-name", "example.org")
        sh(*svcdns, "service", "add", "fixed", "--vip", "10.96.0.50", "--port", "80/tcp")
        step("Endpoints come and go")
        sh(*svcdns, "endpoint", "add", "web", "10.244.1.2", "--hostname", "web-0")
        sh(*svcdns, "endpoint", "add", "web", "10.244.2.2", "--hostname", "web-1")
        sh(*svcdns, "endpoint", "add", "web", "10.244.3.2", "--not-ready")
        sh(*svcdns, "service", "get", "web")
        step("A hand-written file is a Service too; a broken one is reported and ignored")
        Path(registry, "api.yaml").write_text(
            "name: api\nports:\n  - {name: grpc, port: 9090}\nendpoints: [10.244.4.2]\n"
        )
        Path(registry, "broken.yaml").write_text("name: broken\nports:\n  - {port: 99999}\n")
        sh(*svcdns, "service", "list")
        step("Bad input is refused with the field and the value (exit 2)")
        sh(*svcdns, "service", "add", "clash", "--vip", "10.96.0.50", "--port", "80", check=False)
        sh(*svcdns, "service", "get", "web", "-o", "json")
    print("\ndemo: done; the temporary registry was removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
