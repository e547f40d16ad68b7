"""NAS-Bench-201's search space: the network, its cell and its genotypes
(:mod:`.network`), behind :class:`NB201Space`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import numpy as np

from xnas_jax.spaces import kernels
from xnas_jax.spaces.nb201 import network as nb201

__all__ = ["NB201Space"]


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
