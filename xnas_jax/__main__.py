"""``python -m xnas_jax``: the package's commands, one line each.

``python -m xnas_jax`` lists them; ``python -m xnas_jax search ...`` runs one
(the same as ``xnas-search ...`` or ``python -m xnas_jax.search ...``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from xnas_jax import cli

# command -> (module whose main() runs it, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("xnas_jax.search", "search a cell with XNAS (or the DARTS baseline); "
               "writes genotype.json/.py"),
    "train": ("xnas_jax.train", "train the evaluation network of a cell (a found "
              "genotype or a published one)"),
}


def usage() -> str:
    """The list of commands, with the console script and module of each."""
    lines = ["usage: python -m xnas_jax <command> [flags]   (or xnas-<command> [flags])",
             "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "python -m xnas_jax <command> --help describes a command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Lists the commands (no argument, -h, --help) or runs one with the rest of argv."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        cli.fail(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
