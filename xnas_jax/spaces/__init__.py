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

Training a found cell (:mod:`xnas_jax.train`) asks more of a space
(:class:`TrainableSpace`): to read its genotypes from a ``--genotype`` value,
the evaluation networks it builds, and what they have (an auxiliary tower,
drop-path).  :func:`read_genotype` is the one place that finds the space a
``--genotype`` value belongs to.  A space used only for searching needs none
of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import numpy as np

ARCH = "arch"  # the variable collection of the mixture weights u

__all__ = ["ARCH", "SearchSpace", "TrainableSpace", "FoundCell", "GenotypeSpecError", "SPACES",
           "get_space", "register_space", "read_genotype", "training_space"]


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
        """The network that trains a found cell.

        Training passes ``network``, ``channels``, ``layers`` (None: the
        network's default), ``auxiliary`` and ``dtype``; the module is called
        as ``(images, train=..., drop_prob=...)`` and returns ``(logits,
        aux_logits)``, ``aux_logits`` None without an auxiliary tower.
        """

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


@runtime_checkable
class TrainableSpace(SearchSpace, Protocol):
    """What training a found cell needs of a space, beyond :class:`SearchSpace`.

    ``networks`` maps each ``--network`` name the space trains to its default
    ``(channels, layers)``; ``default_recipe`` is the recipe
    (:data:`xnas_jax.configs.RECIPES`) used when ``--recipe`` is not given;
    ``auxiliary_head`` and ``drop_path`` say whether its evaluation networks
    have an auxiliary tower and drop-path, so that a recipe asking for them
    is refused rather than silently ignored.  ``genotype_forms`` describes,
    for error messages, the ``--genotype`` values it reads.
    """

    default_recipe: str
    networks: Mapping[str, tuple[int, int]]
    auxiliary_head: bool
    drop_path: bool
    genotype_forms: str

    def read_genotype(self, source: str | Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        """``(genotype, name)`` if ``source`` is one of the space's genotypes, else None.

        ``source`` is a ``--genotype`` text (a name, a cell string) or a JSON
        object (from a JSON string or a file, see :func:`read_genotype`); the
        genotype is the JSON-ready dict :meth:`evaluation_network` takes, and
        the name a short one for logs (a published name, or "custom").  A
        source of the space's form that is malformed raises a one-line
        ValueError.
        """


class GenotypeSpecError(ValueError):
    """A ``--genotype`` value that no space reads."""


class FoundCell(NamedTuple):
    """A cell to train: its space's name, its genotype (JSON-ready) and a short name."""

    space: str
    genotype: dict[str, Any]
    name: str


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


def training_space(name: str) -> TrainableSpace:
    """The space called ``name``, if it can train its cells.

    Raises:
      ValueError: an unknown name, or a space without what training needs
        (one line, naming what it lacks).
    """
    space = get_space(name)
    if not isinstance(space, TrainableSpace):
        missing = [member for member in dir(TrainableSpace)
                   if not member.startswith("_") and not hasattr(space, member)]
        raise ValueError(f"the {name} space cannot train a cell: it lacks {', '.join(missing)} "
                         f"(xnas_jax.spaces.TrainableSpace)")
    return space


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GenotypeSpecError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise GenotypeSpecError(f"{source} must hold a JSON object, got "
                                f"{type(data).__name__}: {data!r}")
    return data


def _file_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise GenotypeSpecError(f"genotype file {path!r} is not UTF-8 text: {error}") from None
    except OSError as error:
        raise GenotypeSpecError(f"genotype file {path!r}: {error.strerror or error}") from None


def _read_with(source: str | dict[str, Any]) -> FoundCell | None:
    """The cell of the first space that reads ``source``; a JSON object naming its
    ``"space"`` goes to that space alone."""
    if isinstance(source, dict) and "space" in source:
        candidates = [training_space(str(source["space"]))]
    else:
        candidates = [space for space in SPACES.values() if isinstance(space, TrainableSpace)]
    for space in candidates:
        found = space.read_genotype(source)
        if found is not None:
            genotype, name = found
            return FoundCell(space.name, genotype, name)
    return None


def read_genotype(spec: str | os.PathLike) -> FoundCell:
    """The cell a ``--genotype`` value names, and the space it belongs to.

    ``spec`` is a space's own text (a published DARTS name, an nb201 cell
    string ``|op~0|+|op~0|op~1|``), a JSON object string, or a file holding
    either (``genotype.json``, nb201's ``genotype.txt``).  A JSON object with
    a ``"space"`` key belongs to that space; other values are offered to the
    trainable spaces in registration order, so a published name wins over a
    file of the same name.

    Raises:
      ValueError: one line: a value no space reads, bad JSON, an unreadable
        file, an unknown space, or a malformed genotype of a space's form.
    """
    text = os.fspath(spec)
    if text.lstrip().startswith("{"):
        found = _read_with(_json_object(text, "the genotype string"))
    else:
        found = _read_with(text.strip())
        if found is None and os.path.isfile(text):
            content = _file_text(text)
            found = _read_with(_json_object(content, f"genotype file {text!r}")
                               if content.lstrip().startswith("{") else content.strip())
    if found is None:
        forms = [space.genotype_forms for space in SPACES.values()
                 if isinstance(space, TrainableSpace)]
        raise GenotypeSpecError(f"unknown genotype {text!r}: not {', nor '.join(forms)}, nor a "
                                f"genotype file or JSON object string of a space")
    return found


def _register_builtin() -> None:
    from xnas_jax.spaces.darts import DartsSpace  # noqa: PLC0415  (they import this package)
    from xnas_jax.spaces.nb201 import NB201Space  # noqa: PLC0415

    for space in (DartsSpace(), NB201Space()):
        SPACES[space.name] = space


_register_builtin()
