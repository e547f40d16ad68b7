"""Search spaces: what a search needs to know of one, behind one small interface.

A space (:class:`SearchSpace`) names its experts and its cell types (the
tables of the ``arch`` collection), builds the supernet (whose
``feedback_replicas()`` and ``with_computed()`` the search step uses),
checks the image size against its reductions, and discretizes mixture
weights into a genotype, which it writes and draws.  Two spaces come with
the package: DARTS's cell (:mod:`xnas_jax.supernet`, the XNAS paper's space)
and NAS-Bench-201's (:mod:`xnas_jax.nb201`).  :func:`register_space` adds
one from user code; ``--space NAME`` then selects it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import numpy as np

from xnas_jax import evalnet, genotypes, kernels, nb201, plotting
from xnas_jax.supernet import SearchNetwork, validate_ops

__all__ = ["SearchSpace", "DartsSpace", "NB201Space", "SPACES", "get_space",
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


class DartsSpace:
    """DARTS's cell: two cell types, 7 experts (DARTS's 8 but none), 2 inputs kept per node
    (XNAS section 4)."""

    name = "darts"
    cell_types = ("normal", "reduce")
    default_ops = genotypes.XNAS_PRIMITIVES

    def validate_ops(self, ops: Sequence[str]) -> tuple[str, ...]:
        return validate_ops(ops)

    def build(self, config: Any, num_classes: int) -> nn.Module:
        """The supernet of a (resolved) search config."""
        return SearchNetwork(
            num_classes=num_classes, channels=config.channels, layers=config.layers,
            ops=tuple(config.ops), steps=config.nodes,
            dtype=kernels.dtype_from_name(config.dtype), depthwise=config.depthwise)

    def edges(self, nodes: int) -> tuple[tuple[int, int], ...]:
        """The (source, node) of every edge of a cell (sources 0, 1: the cell's inputs)."""
        return tuple(genotypes.edge_list(nodes))

    def edge_labels(self, nodes: int) -> tuple[str, ...]:
        """``source -> state`` of every edge, in states (node i is state i + 2)."""
        return tuple(f"{source} -> {node + 2}" for source, node in self.edges(nodes))

    def evaluation_network(self, genotype: dict[str, Any], num_classes: int,
                           **sizes: Any) -> nn.Module:
        """The network that trains the found cell (DARTS's, :mod:`xnas_jax.evalnet`)."""
        return evalnet.build_network(genotypes.genotype_from_dict(genotype), num_classes,
                                     **sizes)

    def check_image_size(self, image_shape: Sequence[int], layers: int) -> None:
        """Each reduction halves the image with stride-2 ops on an even size."""
        height, width = image_shape[0], image_shape[1]
        for _ in genotypes.reduction_layers(layers):
            if height < 2 or width < 2 or height % 2 or width % 2:
                raise ValueError(
                    f"images of {image_shape[0]}x{image_shape[1]} are too small or odd-sized "
                    f"for the 2 reductions of a {layers}-cell network: each reduction needs "
                    f"an even size >= 2 (e.g. 8x8, 28x28, 32x32)")
            height, width = height // 2, width // 2

    def discretize(self, config: Any, arch: Mapping[str, np.ndarray],
                   rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """The genotype as a JSON-ready dict (edges ranked by XNAS's evidence, or by u)."""
        genotype = genotypes.discretize(arch["normal"], arch["reduce"], config.ops,
                                        config.nodes, rewards)
        return genotypes.genotype_to_dict(genotype, config.ops)

    def selection_rule(self, config: Any, arch: Mapping[str, np.ndarray],
                       rewards: Mapping[str, np.ndarray] | None) -> Any:
        return genotypes.selection_record(arch, config.ops, config.nodes, rewards)["rule"]

    def text(self, genotype: dict[str, Any]) -> str:
        return genotypes.format_genotype(genotypes.genotype_from_dict(genotype))

    def write(self, config: Any, folder: Path, arch: Mapping[str, np.ndarray],
              rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """``genotype.json``, ``genotype.txt``, ``genotype.py`` (the DARTS repository's
        form, for its evaluation code) and the cell pictures; returns the genotype."""
        genotype = genotypes.discretize(arch["normal"], arch["reduce"], config.ops,
                                        config.nodes, rewards)
        genotypes.save_genotype(genotype, folder / "genotype.json", config.ops,
                                selection=genotypes.selection_record(
                                    arch, config.ops, config.nodes, rewards))
        (folder / "genotype.txt").write_text(genotypes.format_genotype(genotype) + "\n")
        genotypes.save_genotype_python(genotype, folder / "genotype.py")
        for cell in self.cell_types:
            plotting.plot_cell(genotype, cell, folder / f"{cell}.png")
        return genotypes.genotype_to_dict(genotype, config.ops)

    def pictures(self) -> tuple[str, ...]:
        return tuple(f"{cell}.png" for cell in self.cell_types)

    def files(self) -> tuple[str, ...]:
        """The files :meth:`write` writes."""
        return ("genotype.json", "genotype.txt", "genotype.py", *self.pictures())


class NB201Space:
    """NAS-Bench-201's cell: one cell type, 5 experts, every edge kept (its strongest op)."""

    name = "nb201"
    cell_types = ("cell",)
    default_ops = nb201.NB201_OPS

    def validate_ops(self, ops: Sequence[str]) -> tuple[str, ...]:
        ops = nb201.check_ops(ops)
        if tuple(ops) != nb201.NB201_OPS:
            raise ValueError(f"the nb201 space searches its 5 operations in their order "
                             f"({','.join(nb201.NB201_OPS)}), got {','.join(ops)}")
        return ops

    def build(self, config: Any, num_classes: int) -> nn.Module:
        """The supernet: ``layers`` cells per stage, ``nodes`` nodes per cell (input and
        output included), batch norms without scale and bias in the cells (as a DARTS
        supernet)."""
        return nb201.NB201Network(num_classes, channels=config.channels,
                                  cells_per_stage=config.layers, nodes=config.nodes,
                                  affine=False, dtype=kernels.dtype_from_name(config.dtype),
                                  normalized_rewards=bool(getattr(config, "normalized_rewards",
                                                                  False)))

    def edges(self, nodes: int) -> tuple[tuple[int, int], ...]:
        """The (source, node) of every edge of a cell (node 0: the cell's input)."""
        return nb201.cell_edges(nodes)

    def edge_labels(self, nodes: int) -> tuple[str, ...]:
        """``source -> node`` of every edge (node 0: the input, the last: the output)."""
        return tuple(f"{source} -> {node}" for source, node in self.edges(nodes))

    def evaluation_network(self, genotype: dict[str, Any], num_classes: int,
                           **sizes: Any) -> nn.Module:
        """The benchmark's network with the found cell (C = 16, N = 5 unless ``sizes``
        say otherwise: ``channels``, ``cells_per_stage``)."""
        return nb201.NB201Network(num_classes, genotype=tuple(genotype["ops"]),
                                  nodes=genotype["nodes"], **sizes)

    def check_image_size(self, image_shape: Sequence[int], layers: int) -> None:
        """The two residual blocks halve the image: its sides must be multiples of 4."""
        del layers
        if image_shape[0] % 4 or image_shape[1] % 4:
            raise ValueError(f"images of {image_shape[0]}x{image_shape[1]} do not fit the 2 "
                             f"reductions of the nb201 network: each side must be a multiple "
                             f"of 4 (e.g. 8x8, 16x16, 32x32)")

    def discretize(self, config: Any, arch: Mapping[str, np.ndarray],
                   rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """The strongest op of each edge (largest u; XNAS's u ranks as its evidence).

        With ``config.skip_cap`` the weakest skips by the evidence (XNAS's
        accumulated rewards, else u) take their edge's next op.
        """
        ops = nb201.discretize(np.asarray(arch["cell"]),
                               None if rewards is None else np.asarray(rewards["cell"]),
                               getattr(config, "skip_cap", None))
        return {"space": self.name, "nodes": config.nodes,
                "genotype": nb201.genotype_string(ops, config.nodes), "ops": list(ops)}

    def selection_rule(self, config: Any, arch: Mapping[str, np.ndarray],
                       rewards: Mapping[str, np.ndarray] | None) -> Any:
        return "the largest weight u on every edge"

    def text(self, genotype: dict[str, Any]) -> str:
        return genotype["genotype"]

    def write(self, config: Any, folder: Path, arch: Mapping[str, np.ndarray],
              rewards: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
        """``genotype.json`` and ``genotype.txt``, the benchmark's arch string (the form
        its API reads: no ``genotype.py``, which is DARTS's form); returns the genotype."""
        genotype = self.discretize(config, arch, rewards)
        (folder / "genotype.json").write_text(json.dumps(genotype, indent=2) + "\n")
        (folder / "genotype.txt").write_text(genotype["genotype"] + "\n")
        return genotype

    def pictures(self) -> tuple[str, ...]:
        return ()

    def files(self) -> tuple[str, ...]:
        """The files :meth:`write` writes."""
        return ("genotype.json", "genotype.txt")


SPACES: dict[str, SearchSpace] = {"darts": DartsSpace(), "nb201": NB201Space()}


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
