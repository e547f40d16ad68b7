"""The run harness shared by the search and the training.

A run is one folder.  The loops (:mod:`xnas_jax.search`, :mod:`xnas_jax.train`)
compute; this module decides where their outputs go and keeps them safe:

* **Where.**  :func:`locate_run` picks the folder before any work starts and
  creates nothing: by default a fresh ``<runs_root>/<date-time>`` (the README
  command can be re-run as often as one likes), with ``--resume`` the newest
  unfinished run under the root, or the folder ``--out-dir`` names.  A folder
  that holds a run is never reused without ``--resume``.  :class:`Run` creates
  the folder only when the loop opens it (after its data loaded), and points
  ``<runs_root>/latest`` at it.
* **What.**  ``config.json`` (the resolved configuration, the command line and
  the library versions), ``status.json`` (running, interrupted or finished),
  ``log.jsonl`` (one record per epoch, cut back to the restored checkpoint on
  resume), ``tensorboard/`` (per-step scalars, histograms, images and text,
  written from values the loop already read back, so no extra host syncs;
  :func:`read_tensorboard` reads them) and ``checkpoints/``
  (:mod:`xnas_jax.checkpointing`: fingerprint check, digests of every array,
  fallback past a corrupt checkpoint).
* **Stopping.**  The first SIGINT or SIGTERM asks the loop to stop after the
  step in flight (:meth:`Run.raise_if_stop_requested`); :meth:`Run.stop` saves
  that step and exits with status 130.  A second Ctrl-C stops at once; the
  last checkpoint then stands.  ``--resume`` continues bit-identically.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import jax
import numpy as np

from xnas_jax import parallel
from xnas_jax.checkpointing import Checkpointer
from xnas_jax.data import readers

__all__ = [
    "RunError", "StopRequested", "Run", "locate_run", "run_state", "read_log", "read_scalars",
    "read_tensorboard",
    "CONFIG_FILE", "STATUS_FILE", "LOG_FILE", "TENSORBOARD_DIR", "CHECKPOINT_DIR", "LATEST",
    "EXIT_INTERRUPTED",
]

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"  # the link to the newest run under a runs root.
EXIT_INTERRUPTED = 130  # the shell's status for a program stopped by SIGINT.
_FINISHED = "finished"


class RunError(ValueError):
    """A run folder that cannot be used as asked (the CLIs print it as one line)."""


class StopRequested(Exception):
    """Raised by :meth:`Run.raise_if_stop_requested` after a SIGINT or SIGTERM."""


# ---------------------------------------------------------------- locating


def run_state(directory: str | os.PathLike) -> str | None:
    """``"running"``, ``"interrupted"`` or ``"finished"``; None if it holds no run.

    A folder with checkpoints but no ``status.json`` counts as unfinished.
    """
    directory = Path(directory)
    try:
        return json.loads((directory / STATUS_FILE).read_text())["state"]
    except (OSError, ValueError, KeyError, TypeError):
        checkpoints = directory / CHECKPOINT_DIR
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            return "interrupted"
        return None


def locate_run(out_dir: str | os.PathLike | None, runs_root: str | os.PathLike,
               resume: bool) -> Path:
    """The folder a run will use; checks it and creates nothing.

    Args:
      out_dir: the folder named by ``--out-dir``, or None for the default.
      runs_root: where default folders go (``runs/search``, ``runs/train``).
      resume: continue a run: the one in ``out_dir``, else the newest
        unfinished run under ``runs_root``.

    Raises:
      RunError: ``out_dir`` is a file, or holds a run and ``resume`` is not
        set; or ``resume`` without ``out_dir`` finds no unfinished run.
    """
    root = Path(runs_root).expanduser().absolute()
    if out_dir is not None:
        directory = Path(out_dir).expanduser().absolute()
        _check_writable(directory, "--out-dir")
        state = run_state(directory)
        if state is not None and not resume:
            if state == _FINISHED:
                raise RunError(
                    f"run folder {str(directory)!r} holds a finished run (checkpoints in "
                    f"{str(directory / CHECKPOINT_DIR)!r}); choose another --out-dir, or omit it "
                    f"for a fresh folder (--resume reopens it and rewrites its outputs)")
            raise RunError(
                f"run folder {str(directory)!r} already holds checkpoints of an unfinished run "
                f"(in {str(directory / CHECKPOINT_DIR)!r}); pass --resume to continue that run, "
                f"or choose another --out-dir")
        return directory
    _check_writable(root, "--runs-root")
    if resume:
        unfinished = [d for d in _runs_under(root) if run_state(d) not in (None, _FINISHED)]
        if not unfinished:
            raise RunError(
                f"--resume found no unfinished run under {str(root)!r}; name one with --out-dir")
        return unfinished[-1]
    return root / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _check_writable(directory: Path, what: str) -> None:
    """The folder, or the nearest ancestor that exists, must be a folder a file can be made in.

    The test file is removed again: nothing is left behind.
    """
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"{what} {str(directory)!r} is not writable: {str(existing)!r} is not "
                       f"a directory")
    # Tried, not asked: os.access says yes to root on read-only mounts, /proc and /sys.
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write_test_"):
            pass
    except OSError as error:
        raise RunError(f"{what} {str(directory)!r} is not writable: cannot create a file in "
                       f"{str(existing)!r} ({error.strerror or error})") from None


def _runs_under(root: Path) -> list[Path]:
    """The run folders under ``root``, oldest first (by name: date-time)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())


def _create(directory: Path, fresh: bool) -> Path:
    """Creates the run folder; a fresh default name that exists gets a suffix."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    if not fresh:
        directory.mkdir(exist_ok=True)
        return directory
    for suffix in range(1, 1000):
        candidate = directory if suffix == 1 else directory.with_name(f"{directory.name}-{suffix}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"cannot find a free run folder name like {str(directory)!r}")


def _point_latest(root: Path, directory: Path) -> None:
    link = root / LATEST
    if link.exists() and not link.is_symlink():
        return  # a user's own folder named 'latest': leave it alone.
    temporary = root / f".{LATEST}.{os.getpid()}"
    try:
        if temporary.is_symlink():
            temporary.unlink()
        temporary.symlink_to(directory.name, target_is_directory=True)
        os.replace(temporary, link)
    except OSError:  # a file system without links: the folder names still sort.
        pass


# ---------------------------------------------------------------- the run


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)


def _is_deleted(tree: Any) -> bool:
    """True if a donated step consumed these arrays (its result was then lost)."""
    return any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree.leaves(tree))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Run:
    """One run folder, open for a loop (see the module docstring).

    Use as a context manager: it installs the stop handlers and, on the way
    out, closes the checkpoints and the TensorBoard writer and records the
    run's state.

    Args:
      directory: from :func:`locate_run`.
      kind: ``"search"`` or ``"train"`` (written to ``config.json``).
      config: the resolved configuration (JSON-serializable).
      fingerprint: the settings a resume must match.
      runs_root: where ``latest`` lives; a folder outside it gets no link.
      resume: continue the checkpoints the folder holds.
      keep_checkpoints: how many of the newest checkpoints to keep.
      progress: show progress bars.
      fresh: ``directory`` is a default name, which may take a suffix.
      resolved: settings derived from the config and the data (written to
        ``config.json`` beside the config, which stays a valid ``--config``).
    """

    def __init__(self, directory: Path, *, kind: str, config: Mapping[str, Any],
                 fingerprint: Mapping[str, Any], runs_root: str | os.PathLike, resume: bool,
                 keep_checkpoints: int, progress: bool = True, fresh: bool = False,
                 resolved: Mapping[str, Any] | None = None):
        # Process 0 creates the folder and writes every file but the
        # checkpoints, which all processes write together (orbax).
        self.writer = parallel.is_writer()
        created = str(_create(Path(directory), fresh)) if self.writer else ""
        self.directory = Path(parallel.broadcast_text(created))
        root = Path(runs_root).expanduser().absolute()
        if self.writer and self.directory.parent == root:
            _point_latest(root, self.directory)
        self.kind = kind
        self.progress_bars = progress and self.writer
        self.checkpoints = Checkpointer(self.directory / CHECKPOINT_DIR, fingerprint=fingerprint,
                                        max_to_keep=keep_checkpoints, resume=resume,
                                        tolerate_corrupt=True)
        self._writer = None
        self._stop = False
        self._handlers: dict[int, Any] = {}
        self.records: list[dict[str, Any]] = []
        if not self.writer:
            return
        _write_json(self.directory / CONFIG_FILE, {
            "kind": kind,
            "config": _jsonable(dict(config)),
            "resolved": _jsonable(dict(resolved or {})),
            "command": sys.argv,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": _versions(),
            "devices": [str(d) for d in jax.devices()],
            "processes": jax.process_count(),
        })
        self._set_state("running")

    # -- context ------------------------------------------------------

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._on_signal)
                              for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        if kind is not None and self.state == "running":
            self._set_state("interrupted")
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.checkpoints.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop = True
        print(f"\n{signal.Signals(signum).name}: stopping after the current step to save a "
              "checkpoint (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    # -- state --------------------------------------------------------

    @property
    def state(self) -> str | None:
        return run_state(self.directory)

    def _set_state(self, state: str, **extra: Any) -> None:
        if not self.writer:
            return
        _write_json(self.directory / STATUS_FILE, {
            "state": state, "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            **extra})

    def finish(self, **summary: Any) -> None:
        """Marks the run finished (a later run never reuses its folder)."""
        self._set_state(_FINISHED, **_jsonable(summary))

    # -- restore and save ---------------------------------------------

    def restore(self, target: Any) -> tuple[Any, int]:
        """The newest intact checkpoint, or ``(target, 0)`` on a fresh run.

        Also cuts ``log.jsonl`` and the TensorBoard scalars back to the
        restored step, so that a resumed run's outputs equal an
        uninterrupted run's.
        """
        restored = self.checkpoints.restore_latest_good(target, log=self.print)
        tree, step = (target, 0) if restored is None else (restored.tree, restored.step)
        self.records = [r for r in read_log(self.directory) if r.get("step", 0) <= step]
        parallel.barrier("read log.jsonl")  # every process has read it before it is cut
        if not self.writer:
            return tree, step
        (self.directory / LOG_FILE).write_text(
            "".join(json.dumps(r) + "\n" for r in self.records))
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(self.directory / TENSORBOARD_DIR),
                                     purge_step=step + 1 if step else None)
        if restored is not None:
            self.print(f"resuming at step {step} from {self.checkpoints.step_path(step)}")
        return tree, step

    def save(self, step: int, tree: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Checkpoint ``step`` (once; a step already saved is kept)."""
        if step not in self.checkpoints.steps:
            self.checkpoints.save(step, tree, metadata)
        if self._writer is not None:
            self._writer.flush()

    # -- outputs ------------------------------------------------------

    def log(self, record: Mapping[str, Any]) -> None:
        """Appends one record (with a ``step``) to ``log.jsonl``."""
        record = _jsonable(dict(record))
        self.records.append(record)
        if not self.writer:
            return
        with (self.directory / LOG_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _board(self):
        """The TensorBoard writer; None in processes other than the writer."""
        if not self.writer:
            return None
        if self._writer is None:
            raise RuntimeError("Run.restore opens the TensorBoard writer; call it first")
        return self._writer

    def summaries(self, step: int, *, scalars: Mapping[str, Any] | None = None,
                  histograms: Mapping[str, Any] | None = None,
                  images: Mapping[str, Any] | None = None,
                  texts: Mapping[str, str] | None = None) -> None:
        """Writes TensorBoard summaries at ``step``, each a ``{tag: value}``: scalars (host
        numbers), histograms (the distribution of a host array), images ((H, W, 3)
        uint8) and texts (Markdown; indent lines by 4 to keep them as typed)."""
        board = self._board()
        if board is None:
            return
        for tag, value in (scalars or {}).items():
            board.add_scalar(tag, float(value), int(step))
        for tag, values in (histograms or {}).items():
            board.add_histogram(tag, np.asarray(values, np.float64).ravel(), int(step))
        for tag, pixels in (images or {}).items():
            board.add_image(tag, np.asarray(pixels, np.uint8), int(step), dataformats="HWC")
        for tag, text in (texts or {}).items():
            board.add_text(tag, text, int(step))

    def print(self, message: str) -> None:
        """A line on stdout that does not break a progress bar (process 0 only)."""
        if not self.writer:
            return
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()

    def progress(self, total: int, initial: int, desc: str):
        """A progress bar on stderr (a no-op one with progress off)."""
        if not self.progress_bars:
            return _NoBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False,
                    dynamic_ncols=True, file=sys.stderr)

    # -- stopping -----------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def raise_if_stop_requested(self) -> None:
        if self._stop:
            raise StopRequested()

    def stop(self, step: int, tree: Any, metadata: Mapping[str, Any] | None = None) -> NoReturn:
        """Saves ``step`` (unless a donated step consumed ``tree``) and exits 130."""
        if _is_deleted(tree):
            saved = self.checkpoints.latest_step
            where = f"the last checkpoint is step {saved}" if saved is not None else "no checkpoint"
            message = f"interrupted during step {step + 1}, whose state is lost; {where}"
        else:
            self.save(step, tree, metadata)
            message = f"interrupted at step {step}: checkpoint saved"
        self._set_state("interrupted", step=step)
        if self.writer:
            print(f"\n{message} in {self.directory / CHECKPOINT_DIR}; continue with --resume "
                  f"--out-dir {self.directory}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED)


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("xnas_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------- reading


def read_log(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (empty if it has none)."""
    path = Path(directory) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary_value(value: Any) -> Any:
    """A TensorBoard summary value as Python: a float, text, an image or a histogram."""
    if value.HasField("simple_value"):
        return value.simple_value
    if value.HasField("image"):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
    if value.HasField("histo"):
        histo = value.histo
        return {"count": histo.num, "sum": histo.sum, "min": histo.min, "max": histo.max}
    if value.metadata.plugin_data.plugin_name == "text":
        return value.tensor.string_val[0].decode("utf-8")
    return None


def read_tensorboard(directory: str | os.PathLike) -> dict[str, list[tuple[int, Any]]]:
    """``{tag: [(step, value), ...]}`` of every summary in a run's TensorBoard files.

    A value is a float (a scalar), a ``str`` (text, under TensorBoard's tag
    ``<tag>/text_summary``), an (H, W, C) uint8 array (an image) or a dict of
    ``count``, ``sum``, ``min`` and ``max`` (a histogram).  Later files win
    for a step written twice (a resumed run purges the steps after its
    checkpoint and writes them again).
    """
    from tensorboardX.proto import event_pb2

    found: dict[str, dict[int, Any]] = {}
    for file in sorted((Path(directory) / TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        for payload in readers.read_tfrecord(file, allow_truncated=True):
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                content = _summary_value(value)
                if content is not None:
                    found.setdefault(value.tag, {})[int(event.step)] = content
    return {tag: sorted(points.items()) for tag, points in found.items()}


def read_scalars(directory: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalars of a run's TensorBoard files."""
    return {tag: points for tag, points in read_tensorboard(directory).items()
            if isinstance(points[0][1], float)}
