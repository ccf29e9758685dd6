"""Child processes end with their parent (crack_tf.procs), also when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited already
        return f.read().split()[2] != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _kill9_parent_and_check_child(parent_code: str, tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", parent_code.format(pid_file=str(pid_file))], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.time() + 60
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        assert _wait_gone(child), "the child outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_popen_child_dies_with_a_sigkilled_parent(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from crack_tf import procs
        p = procs.popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({pid_file!r}, "w").write(str(p.pid))
        time.sleep(120)
    """)
    _kill9_parent_and_check_child(code, tmp_path)


def test_an_exec_under_crack_tf_procs_dies_with_its_shell(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (f"python -m crack_tf.procs -- {sys.executable} -c 'import time; time.sleep(120)' & "
              f"echo $! > {pid_file}; wait")
    shell = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.time() + 30
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
        time.sleep(0.1)
    child = int(pid_file.read_text())
    time.sleep(1.0)  # the exec has happened
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    try:
        assert _wait_gone(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_ablate_runs_die_with_a_sigkilled_ablate(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from tests.tool_loader import load_tool
        ablate = load_tool("ablate")
        sleeper = [sys.executable, "-c", "import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(120)"]
        ablate.Launcher.command = staticmethod(lambda run: sleeper)
        runs = ablate.build_runs("ours", "b.cfg", ["a:lr=1"], [0], {out!r}, [])
        ablate.run_grid(runs, {out!r}, "ours", log=lambda s: None)
    """).replace("{out!r}", repr(str(tmp_path / "grid")))
    _kill9_parent_and_check_child(code, tmp_path)
