"""Search spaces: what a search needs to know of one, behind one small interface.

A space (:class:`SearchSpace`) names its experts and its cell types (the
tables of the ``arch`` collection), builds the supernet (whose
``feedback_replicas()`` and ``with_computed()`` the search step uses),
checks the image size against its reductions, and discretizes mixture
weights into a genotype, which it writes and draws.  Two spaces come with
the package, each a package of its own: DARTS's cell
(:mod:`xnas_jax.spaces.darts`, the XNAS paper's space) and NAS-Bench-201's
(:mod:`xnas_jax.spaces.nb201`); their layers share :mod:`.ops` and
:mod:`.kernels`.  :func:`register_space` adds one from user code;
``--space NAME`` then selects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import numpy as np

ARCH = "arch"  # the variable collection of the mixture weights u

__all__ = ["ARCH", "SearchSpace", "SPACES", "get_space",
           "register_space"]


@runtime_checkable
class SearchSpace(Protocol):
    """What a search needs of a search space.

    ``build`` returns a Flax supernet whose mixture weights are the tables
    ``cell_types`` of the ``arch`` collection, shape (E, N) with N =
    ``len(ops)``, each also accepted per feedback as (r_c, B, E, N), with r_c
    its ``feedback_replicas()[cell_type]`` (:mod:`xnas_jax.feedback`); and
    ``with_computed({cell_type: ops})``, the same supernet computing only
    those experts (the others behave as u = 0).
    """

    name: str
    cell_types: tuple[str, ...]
    default_ops: tuple[str, ...]

    def validate_ops(self, ops: Sequence[str]) -> tuple[str, ...]:
        """The ops, checked to be the space's (a one-line ValueError otherwise)."""

    def build(self, config: Any, num_classes: int) -> nn.Module:
        """The supernet of a resolved search config (its channels, layers, nodes, ops)."""

    def edges(self, nodes: int) -> tuple[tuple[int, int], ...]:
        """The (source, node) of every edge of a cell: the rows of a table."""

    def edge_labels(self, nodes: int) -> tuple[str, ...]:
        """A short label per edge, for plots."""

    def evaluation_network(self, genotype: dict[str, Any], num_classes: int,
                           **sizes: Any) -> nn.Module:
        """The network that trains a found cell."""

    def check_image_size(self, image_shape: Sequence[int], layers: int) -> None:
        """A one-line ValueError if the images do not fit the network's reductions."""

    def discretize(self, config: Any, arch: Mapping[str, np.ndarray],
                   rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """The genotype (a JSON-ready dict) from the final weights and evidence."""

    def selection_rule(self, config: Any, arch: Mapping[str, np.ndarray],
                       rewards: Mapping[str, np.ndarray] | None) -> Any:
        """How the genotype was chosen (for the log)."""

    def text(self, genotype: dict[str, Any]) -> str:
        """The genotype as text."""

    def write(self, config: Any, folder: Path, arch: Mapping[str, np.ndarray],
              rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """Writes the genotype's files (:meth:`files`) into ``folder``; returns it."""

    def pictures(self) -> tuple[str, ...]:
        """The pictures among the files :meth:`write` writes."""

    def files(self) -> tuple[str, ...]:
        """The files :meth:`write` writes."""


SPACES: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace, *, replace: bool = False) -> SearchSpace:
    """Makes ``space`` selectable by its name (``--space NAME``, ``get_space``).

    Raises:
      ValueError: ``space`` lacks a method of :class:`SearchSpace`, or its name
        is taken (unless ``replace``).
    """
    if not isinstance(space, SearchSpace):
        missing = [name for name in dir(SearchSpace)
                   if not name.startswith("_") and not hasattr(space, name)]
        raise ValueError(f"{space!r} is not a SearchSpace: it lacks {', '.join(missing)}")
    if space.name in SPACES and not replace:
        raise ValueError(f"a search space called {space.name!r} exists already; pass "
                         f"replace=True to replace it")
    SPACES[space.name] = space
    return space


def get_space(name: str) -> SearchSpace:
    """The space called ``name``.

    Raises:
      ValueError: an unknown name (one line, naming the spaces).
    """
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; the spaces are "
                         f"{', '.join(SPACES)}")
    return SPACES[name]


def _register_builtin() -> None:
    from xnas_jax.spaces.darts import DartsSpace  # noqa: PLC0415  (they import this package)
    from xnas_jax.spaces.nb201 import NB201Space  # noqa: PLC0415

    for space in (DartsSpace(), NB201Space()):
        SPACES[space.name] = space


_register_builtin()
