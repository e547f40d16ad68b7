"""Runs a command of the package and kills its own process with SIGKILL at a chosen point.

Used by tests/test_faults.py, each run in a process of its own::

    python tests/fault_runner.py [--max-file-size BYTES] POINT MODULE ARGS...

``--max-file-size`` sets RLIMIT_FSIZE first: no file of the run can grow past
BYTES (a write past it fails with EFBIG, as one fails with ENOSPC on a full
disk).  Set here rather than in the parent's ``preexec_fn``, which would fork
a multithreaded JAX process.

POINT is one of:

* ``commit:N`` -- in the N-th checkpoint save of this process, when orbax has
  written every file into the checkpoint's temporary folder and is about to
  commit it (rename it to the step's folder): a kill during the write;
* ``saved:N`` -- as soon as the N-th checkpoint save has returned (the
  checkpoint is on disk, nothing after it is);
* ``step:N`` -- after the N-th step of this process (mid-epoch, between
  checkpoints);
* ``none`` -- no kill.

SIGKILL cannot be caught: nothing of the run's own cleanup runs, as when the
machine loses power or the scheduler kills the job.
"""

from __future__ import annotations

import os
import resource
import runpy
import signal
import sys
from typing import Any, Callable


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(owner: Any, name: str, count: int) -> None:
    """Kills the process when the ``count``-th call of ``owner.name`` returns."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] == count:
            _kill()
        return result

    setattr(owner, name, wrapped)


def _on_commit(count: int) -> None:
    """Kills the process when orbax is about to commit its ``count``-th checkpoint."""
    from orbax.checkpoint._src.path import atomicity

    original: Callable = atomicity.AtomicRenameTemporaryPath.finalize
    calls = {"n": 0}

    async def finalize(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A checkpoint has two temporary folders (the step's, then its items'),
        # each committed in turn: count the step's, the one in the checkpoint folder.
        if self.get().parent.name == "checkpoints":
            calls["n"] += 1
            if calls["n"] == count:
                _kill()
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main(point: str, module: str, argv: list[str]) -> None:
    from xnas_jax import checkpointing, runs

    kind, _, count = point.partition(":")
    if kind == "commit":
        _on_commit(int(count))
    elif kind == "saved":
        _on_call(checkpointing.Checkpointer, "save", int(count))
    elif kind == "step":
        # The loops ask after every step whether to stop.
        _on_call(runs.Run, "raise_if_stop_requested", int(count))
    elif kind != "none":
        raise SystemExit(f"unknown kill point {point!r}")
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--max-file-size":
        limit = int(args[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        args = args[2:]
    main(args[0], args[1], args[2:])
