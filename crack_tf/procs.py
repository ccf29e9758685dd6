"""Child processes that end with their parent, even when the parent is killed with SIGKILL.

On Linux each child asks the kernel for ``SIGTERM`` when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``); a parent that is interrupted normally also
terminates them itself. Elsewhere only the second part applies.

* ``popen(argv, ...)`` / ``run(argv, ...)``: ``subprocess.Popen`` / ``subprocess.run`` with that.
* ``python -m crack_tf.procs -- CMD ...``: runs CMD tied to the calling shell
  (``tools/parallel_runs.sh`` starts its trainings this way).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: a forked child of a threaded parent must not dlopen anything.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def tie_to_parent() -> None:
    """In a freshly forked child: die (SIGTERM) when the parent dies. No-op off Linux."""
    if _LIBC is None:
        return
    parent = os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def popen(argv: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` whose child ends when this process ends."""
    return subprocess.Popen(argv, preexec_fn=tie_to_parent, **kwargs)  # noqa: PLW1509 (no threads touched)


def run(argv: list[str], timeout: float | None = None, capture_output: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose child ends when this process ends (or on timeout / Ctrl-C)."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with popen(argv, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m crack_tf.procs -- CMD [ARGS...]")
    tie_to_parent()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
