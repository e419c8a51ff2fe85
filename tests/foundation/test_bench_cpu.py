"""The labeling benchmark's CPU accounting: a server's CPU includes its worker processes' (gunicorn forks
workers, Granian forks them from another thread), so the "where the cores go" figures cannot miss them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.labeling import cpu_seconds, descendants, machine_busy_seconds

pytestmark = pytest.mark.backend_independent

# a parent that starts a child from a second thread; the child burns ~0.4 s of CPU, says so, then waits
PARENT = r"""
import subprocess, sys, threading
CHILD = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint('burnt', flush=True)\ninput()"
holder = {}
thread = threading.Thread(target=lambda: holder.update(p=subprocess.Popen(
    [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)))
thread.start(); thread.join()
child = holder["p"]
assert child.stdout.readline().strip() == "burnt"
print(child.pid, flush=True)
input()
child.stdin.close(); child.wait()
"""


def test_cpu_seconds_counts_children_started_from_another_thread():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert child_pid in descendants(parent.pid)
        assert cpu_seconds(parent.pid) >= 0.35  # the child's burn (own start-up CPU comes on top)
        assert cpu_seconds(child_pid) <= cpu_seconds(parent.pid)
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)


def test_machine_busy_seconds_grows():
    before = machine_busy_seconds()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.2: pass"], check=True)
    assert machine_busy_seconds() - before >= 0.15
