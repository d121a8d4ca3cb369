"""One agent per network namespace: the second is refused, naming the first; a dead one frees it."""

import os
import signal
import subprocess
import sys

import pytest

from svcdns.cli.lock import AgentLock
from svcdns.errors import SvcdnsError


def test_a_second_agent_in_the_namespace_is_refused_naming_the_first(tmp_path):
    with AgentLock(str(tmp_path)):
        with pytest.raises(SvcdnsError, match=f"another svcdns agent \\(PID {os.getpid()}\\) already runs"):
            AgentLock(str(tmp_path)).acquire()
    with AgentLock(str(tmp_path)):  # released: the next one starts
        pass


def test_the_lock_of_a_killed_agent_is_free_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from svcdns.cli.lock import AgentLock\n"
         f"AgentLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SvcdnsError, match=f"PID {holder.pid}"):
            AgentLock(str(tmp_path)).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # what the OOM killer does: no cleanup ran
        holder.wait()
    with AgentLock(str(tmp_path)):
        pass
