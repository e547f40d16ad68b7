"""Command-line helpers shared by the project's entry points.

Every bad input ends the same way: ONE line ``error: <what was wrong>`` on
stderr and exit status 2 (argparse's own convention for usage errors), never a
traceback.  :class:`ArgumentParser` routes argparse's errors through
:func:`fail`; the ``*_int`` / ``*_float`` helpers are argparse ``type=``
callables whose messages name the bad value; :func:`writable_dir` checks an
output directory before any work starts.  :func:`use_compilation_cache`
turns on the persistent compilation cache that both commands keep, by default,
in the user's cache folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

__all__ = [
    "EXIT_USAGE",
    "ArgumentParser",
    "fail",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "non_negative_float",
    "probability",
    "writable_dir",
    "enable_compilation_cache",
    "default_compilation_cache",
    "use_compilation_cache",
    "DEFAULT_COMPILATION_CACHE",
]

EXIT_USAGE = 2

# How --help names the default compilation cache (default_compilation_cache()).
DEFAULT_COMPILATION_CACHE = "$XDG_CACHE_HOME/xnas_jax/jax, else ~/.cache/xnas_jax/jax"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints ``error: message`` as one line on stderr and exits with ``code``.

    Newlines inside ``message`` are folded into spaces so that the message
    stays one line whatever produced it (e.g. a multi-line exception text).
    """
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line, exit 2.

    argparse prints the whole usage block before its message; here a bad flag
    gives only ``error: <prog>: <message>`` (``--help`` is unchanged).
    """

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def _parse_number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _parse_number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _parse_number(text, int, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parse_number(text, float, "a positive number")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _parse_number(text, float, "a non-negative number")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = _parse_number(text, float, "a probability in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Creates ``path`` if needed and checks that files can be written in it.

    Args:
      path: the directory.
      what: how error messages name it (e.g. ``"--out-dir"``).

    Returns:
      The directory as an absolute :class:`Path`.

    Raises:
      ValueError: naming the directory, if it is a file, cannot be created,
        or is not writable (checked by creating and removing a temporary file,
        which also catches read-only mounts that ``os.access`` misses).
    """
    directory = Path(path).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{what} {str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"{what} {str(directory)!r} is not writable: {reason}") from None
    return directory


def enable_compilation_cache(directory: str | os.PathLike) -> Path:
    """Persists compiled XLA programs in ``directory`` (``--compilation-cache``).

    A repeated or resumed run with the same shapes then loads its step from
    disk instead of compiling it again.

    Raises:
      ValueError: if the directory cannot be created or written.
    """
    from jax.experimental.compilation_cache import compilation_cache
    import jax

    cache = writable_dir(directory, "--compilation-cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # Reset, so that the setting holds even if this process compiled before.
    compilation_cache.set_cache_dir(str(cache))
    compilation_cache.reset_cache()
    return cache


def default_compilation_cache() -> Path:
    """The user's compilation cache: ``$XDG_CACHE_HOME/xnas_jax/jax``, else
    ``~/.cache/xnas_jax/jax`` (the XDG base directory convention)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "xnas_jax" / "jax"


def use_compilation_cache(setting: str | os.PathLike | bool | None) -> Path | None:
    """Turns on the persistent compilation cache that a run's config asks for.

    Compiling the search step takes minutes on a CPU; with the cache a run
    whose shapes an earlier run on this machine compiled loads the program
    instead, so the compile is paid once per machine.

    Args:
      setting: a run's ``compilation_cache``: a folder (``--compilation-cache
        DIR``), ``False`` for none (``--no-compilation-cache``), or ``None`` /
        ``True`` for the user's cache folder (:func:`default_compilation_cache`).

    Returns:
      The cache folder, or None when there is none: turned off, or the default
      folder cannot be written (the run goes on without it, saying so).

    Raises:
      ValueError: if a folder given explicitly cannot be created or written.
    """
    if setting is False:
        return None
    if setting is None or setting is True:
        try:
            return enable_compilation_cache(default_compilation_cache())
        except ValueError as error:
            print(f"warning: no compilation cache: {error}", file=sys.stderr, flush=True)
            return None
    return enable_compilation_cache(setting)
