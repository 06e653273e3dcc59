"""Run by hand, never collected by the suite (the file name does not match ``test_*.py``): a test that hangs inside a
command it started fails at its time limit, and the command's whole process group dies with it.

    python -m pytest tests/hang_check.py; ps -eo pid,pgid,args | grep -c '[s]leep 1000'    # 0
"""
from __future__ import annotations

import sys

import pytest

from skinlesion.testing import started

HANG = "import subprocess, time; subprocess.Popen(['sleep', '1000']); time.sleep(1000)"   # a child and a grandchild


@pytest.mark.timeout(5)
def test_a_hanging_command_fails_at_the_limit_and_leaves_nothing_behind():
    with started([sys.executable, "-c", HANG]) as proc:
        proc.wait()
