"""NAS-Bench-201's search space: the network, its cell and its genotypes
(:mod:`.network`), behind :class:`NB201Space`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xnas_jax.spaces import kernels
from xnas_jax.spaces.nb201 import network as nb201

__all__ = ["NB201Space"]


class NB201Space:
    """NAS-Bench-201's cell: one cell type, 5 experts, every edge kept (its strongest op)."""

    name = "nb201"
    cell_types = ("cell",)
    default_ops = nb201.NB201_OPS
    # Training (xnas_jax.spaces.TrainableSpace): the benchmark's network, C = 16 and
    # N = 5 cells per stage, trained without auxiliary tower or drop-path.
    default_recipe = "nb201"
    networks = {"nb201": (16, 5)}
    auxiliary_head = False
    drop_path = False
    genotype_forms = "an nb201 cell string like '|nor_conv_3x3~0|+|skip_connect~0|none~1|'"

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

    def evaluation_network(self, genotype: dict[str, Any], num_classes: int, *,
                           network: str = "nb201", channels: int | None = None,
                           layers: int | None = None, auxiliary: bool = False,
                           dtype: Any = jnp.float32) -> nn.Module:
        """The benchmark's network with the found cell (:class:`nb201.NB201EvalNetwork`):
        C = ``channels`` (16) and N = ``layers`` cells per stage (5), as ``--layers``
        in an nb201 search.

        Raises:
          SpaceError: another ``network``, an auxiliary tower, or sizes below 1.
        """
        if network not in self.networks:
            raise nb201.SpaceError(f"the nb201 space trains the nb201 network, not {network!r}")
        if auxiliary:
            raise nb201.SpaceError("the nb201 network has no auxiliary tower")
        default_channels, default_layers = self.networks[network]
        channels = default_channels if channels is None else channels
        layers = default_layers if layers is None else layers
        if channels < 1 or layers < 1 or num_classes < 1:
            raise nb201.SpaceError(f"channels, layers and num_classes must be >= 1, got "
                                   f"{channels}, {layers}, {num_classes}")
        return nb201.NB201EvalNetwork(num_classes, channels=channels, cells_per_stage=layers,
                                      nodes=genotype["nodes"], genotype=tuple(genotype["ops"]),
                                      dtype=dtype)

    def read_genotype(self, source: str | Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        """A cell string (``|op~0|+|op~0|op~1|``, as in ``genotype.txt``), or the JSON object
        of an nb201 ``genotype.json`` (``"space": "nb201"``; its ``"genotype"`` string, else
        its ``"ops"`` and ``"nodes"``); the name is the cell string."""
        if isinstance(source, Mapping):
            if source.get("space") != self.name:
                return None
            if isinstance(source.get("genotype"), str):
                return self.read_genotype(source["genotype"])
            ops, nodes = source.get("ops"), source.get("nodes")
            if not isinstance(ops, list) or not isinstance(nodes, int):
                raise nb201.SpaceError(f"an nb201 genotype needs a 'genotype' cell string, or "
                                       f"'ops' (a list) and 'nodes' (an int); got {dict(source)!r}")
            text = nb201.genotype_string(nb201.check_ops(ops), nodes)
        elif source.strip().startswith("|"):
            text = source.strip()
        else:
            return None
        ops = nb201.parse_genotype(text)
        nodes = text.count("+") + 2
        return ({"space": self.name, "nodes": nodes, "genotype": text, "ops": list(ops)}, text)

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
