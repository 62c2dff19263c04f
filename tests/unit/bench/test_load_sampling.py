"""bench.load measures an engine host as the whole process tree under its pid, not the first process only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from bench.load import _proc_cpu_seconds, process_tree, tree_cpu_seconds, tree_status_kb

# A parent that sleeps while the child it started burns CPU (as a host's worker processes would).
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\\nend = time.monotonic() + 20\\nwhile time.monotonic() < end: pass"])
    print(child.pid, flush=True)
    time.sleep(20)
""")


def test_cpu_and_memory_of_a_host_count_the_processes_under_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert process_tree(parent.pid) == [parent.pid, child]
        own, tree = _proc_cpu_seconds(parent.pid), tree_cpu_seconds(parent.pid)
        time.sleep(0.5)
        assert tree_cpu_seconds(parent.pid) - tree > 0.05  # the child's spinning (even on a busy machine)
        assert _proc_cpu_seconds(parent.pid) - own < 0.05  # the parent only sleeps
        parent_rss = tree_status_kb(parent.pid, "VmRSS") or 0
        child_rss = tree_status_kb(child, "VmRSS") or 0
        assert child_rss > 0 and parent_rss > child_rss  # the sum holds the child's pages as well
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
