"""The examples every subcommand's ``--help`` ends with (and the man page shows): real invocations,
checked by the unit tests to parse with the parser they document."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

EXAMPLES: dict[str, list[str]] = {
    "service": ["svcdns service add web --port http:80:8080/tcp", "svcdns service list -A -o wide",
                "svcdns service describe web"],
    "service add": [
        "svcdns service add web --port http:80:8080/tcp --port dns:53/udp",
        "svcdns service add web --selector app=web --port http:80:http -l tier=front",
        "svcdns service add db --headless --port 5432/tcp",
    ],
    "service get": ["svcdns service get web", "svcdns service get web -n prod -o yaml", "svcdns service get web -o wide"],
    "service describe": ["svcdns service describe web", "svcdns service describe api -n prod --health-listen 127.0.0.1:10256"],
    "service list": ["svcdns service list -A", "svcdns service list -l tier=front -o wide",
                     "svcdns service list -w --output-watch-events"],
    "service rm": ["svcdns service rm web", "svcdns service rm web -n prod --ignore-not-found"],
    "endpoint": ["svcdns endpoint add web 10.0.1.5 --hostname web-0", "svcdns endpoint list web"],
    "endpoint add": [
        "svcdns endpoint add web 10.0.1.5 --hostname web-0",
        "svcdns endpoint add web 10.0.1.5 --not-ready",
        "svcdns endpoint add web 10.0.1.5 --terminating",
    ],
    "endpoint rm": ["svcdns endpoint rm web 10.0.1.5", "svcdns endpoint rm web 10.0.1.5 --ignore-not-found"],
    "endpoint list": ["svcdns endpoint list web", "svcdns endpoint list web -o name", "svcdns endpoint list web -o json"],
    "pod": ["svcdns pod add web-0 10.244.1.5 -l app=web", "svcdns pod list -w"],
    "pod add": [
        "svcdns pod add web-0 10.244.1.5 -l app=web,tier=front --port http:8080/tcp",
        "svcdns pod add web-0 10.244.1.5 fd00:244::5 -l app=web --hostname web-0 --subdomain web",
        "svcdns pod add db-0 10.244.2.7 -l app=db --node n1 --not-ready",
    ],
    "pod rm": ["svcdns pod rm web-0", "svcdns pod rm web-0 --grace 30", "svcdns pod rm web-0 --ignore-not-found"],
    "pod label": ["svcdns pod label web-0 tier=back", "svcdns pod label web-0 app-"],
    "pod get": ["svcdns pod get web-0", "svcdns pod get web-0 -o yaml"],
    "pod list": ["svcdns pod list -l app=web -o wide", "svcdns pod list -A -o name", "svcdns pod list -w"],
    "node": ["svcdns node list --registry etcd://127.0.0.1:2379/svcdns", "svcdns node list -o yaml"],
    "node list": ["svcdns node list --registry etcd://127.0.0.1:2379/svcdns", "svcdns node list -o json"],
    "node rm": ["svcdns node rm n1 --registry etcd://127.0.0.1:2379/svcdns", "svcdns node rm n1"],
    "apply": ["svcdns apply -f app.yaml", "svcdns apply -f manifests/ --strict", "kubectl get svc,pod -o yaml | svcdns apply -f -"],
    "delete": ["svcdns delete -f app.yaml", "svcdns delete -f manifests/ --ignore-not-found"],
    "dns": ["svcdns dns --listen 127.0.0.1:5353", "svcdns dns --zone example.internal --no-forward"],
    "sync": ["svcdns sync --once", "svcdns sync --dataplane iptables"],
    "cleanup": ["svcdns cleanup", "svcdns cleanup --dataplane iptables"],
    "agent": ["svcdns agent", "svcdns agent --config /etc/svcdns/svcdns.toml -v",
              "svcdns agent --registry etcd://10.0.0.1:2379/svcdns --dns-listen 127.0.0.1:5353"],
    "status": ["svcdns status", "svcdns status -o json"],
    "install": ["svcdns install", "svcdns install --with-resolved", "svcdns install --root /tmp/image"],
    "uninstall": ["svcdns uninstall", "svcdns uninstall --root /tmp/image"],
    "resolv-conf": ["svcdns resolv-conf", "svcdns resolv-conf --write /etc/netns/pod1/resolv.conf"],
    "completion": ["svcdns completion bash > /etc/bash_completion.d/svcdns", "svcdns completion zsh > ~/.zfunc/_svcdns"],
    "man": ["svcdns man | man -l -", "svcdns man > /usr/local/share/man/man8/svcdns.8"],
}


def subcommands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every subcommand below ``parser`` (aliases once), as ("service add", its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    full = f"{path} {name}".strip()
                    yield full, sub
                    yield from subcommands(sub, full)


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give each subcommand its examples as an epilog kept as written."""
    for path, sub in subcommands(parser):
        examples = EXAMPLES.get(path)
        if examples:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            sub.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)


def argv_of(example: str) -> list[str] | None:
    """The svcdns arguments of an example (its svcdns command in a pipeline, without redirections)."""
    for part in example.split("|"):
        words = shlex.split(part.split(">")[0])
        if words and words[0] == "svcdns":
            return words[1:]
    return None


__all__ = ["EXAMPLES", "add_examples", "argv_of", "subcommands"]
