"""The experiments: the paper's (:mod:`experiments.paper`) and the NAS-Bench-201 search
quality (:mod:`experiments.groundtruth`, :mod:`experiments.search_quality`,
:mod:`experiments.quality_study`); the benchmarks are the top-level :mod:`benchmarks`.

Every script, here and in :mod:`benchmarks`, has the same command line:

* it runs as ``python -m <module>``, and its ``--help`` describes it by the first line
  of its docstring and gives every flag's default;
* ``main(argv=None) -> int`` returns 0 on success; bad input ends in one line
  ``error: ...`` on stderr and exit status 2 (:mod:`xnas_jax.cli`), before any work;
* what it writes goes to ``experiments/results/`` (:data:`RESULTS`) unless ``--out``
  says otherwise;
* a script that reads CIFAR-10 takes ``--data-dir``, a folder with the JPEG archives
  ``train.zip`` and ``test.zip``: by default ``$XNAS_DATA_DIR``, else
  ``data/cifar10_jpeg`` relative to the current directory (:func:`default_data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

from xnas_jax import cli

__all__ = ["RESULTS", "DATA_DIR_ENV", "DEFAULT_DATA_DIR", "default_data_dir",
           "argument_parser", "add_out", "add_data_dir", "data_files"]

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR_ENV = "XNAS_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("data", "cifar10_jpeg")


def default_data_dir() -> str:
    """``--data-dir``'s default: ``$XNAS_DATA_DIR``, else ``data/cifar10_jpeg``."""
    return os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)


def argument_parser(module: str, doc: str) -> cli.ArgumentParser:
    """The parser of ``python -m <module>``, described by the first line of ``doc``.

    Its usage errors are one line ``error: ...`` and exit status 2.
    """
    return cli.ArgumentParser(prog=f"python -m {module}", description=doc.strip().splitlines()[0])


def add_out(parser: cli.ArgumentParser, what: str = "output folder") -> None:
    """Adds ``--out``, by default :data:`RESULTS`."""
    parser.add_argument("--out", default=str(RESULTS), help=f"{what} (default: %(default)s)")


def add_data_dir(parser: cli.ArgumentParser) -> None:
    """Adds ``--data-dir``: the folder with CIFAR-10's ``train.zip`` and ``test.zip``."""
    parser.add_argument(
        "--data-dir", default=default_data_dir(),
        help=f"folder with CIFAR-10 as JPEG archives, train.zip and test.zip (default: "
             f"${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR} in the current directory; now "
             f"%(default)s)")


def data_files(data_dir: str | os.PathLike, *names: str) -> list[Path]:
    """The files ``names`` in ``data_dir``; if one is missing, one line ``error: ...`` and
    exit status 2."""
    paths = [Path(data_dir) / name for name in names]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        cli.fail(f"{data_dir} lacks {' and '.join(missing)}: pass --data-dir, a folder with "
                 f"CIFAR-10 as JPEG archives, or set {DATA_DIR_ENV}")
    return paths
