"""DARTS's search space, the XNAS paper's: the supernet (:mod:`.supernet`), genotypes
(:mod:`.genotypes`), the evaluation network (:mod:`.evalnet`) and the cell's picture
(:mod:`.drawing`), behind :class:`DartsSpace`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xnas_jax.spaces import kernels
from xnas_jax.spaces.darts import drawing, evalnet, genotypes
from xnas_jax.spaces.darts.supernet import SearchNetwork, validate_ops

__all__ = ["DartsSpace"]


class DartsSpace:
    """DARTS's cell: two cell types, 7 experts (DARTS's 8 but none), 2 inputs kept per node
    (XNAS section 4)."""

    name = "darts"
    cell_types = ("normal", "reduce")
    default_ops = genotypes.XNAS_PRIMITIVES
    # Training (xnas_jax.spaces.TrainableSpace): DARTS's CIFAR and ImageNet networks.
    default_recipe = "darts"
    networks = {name: (size.channels, size.layers) for name, size in evalnet.VARIANTS.items()}
    auxiliary_head = True
    drop_path = True
    genotype_forms = f"a published DARTS cell ({', '.join(genotypes.PUBLISHED)})"

    def validate_ops(self, ops: Sequence[str]) -> tuple[str, ...]:
        return validate_ops(ops)

    def build(self, config: Any, num_classes: int) -> nn.Module:
        """The supernet of a (resolved) search config."""
        return SearchNetwork(
            num_classes=num_classes, channels=config.channels, layers=config.layers,
            ops=tuple(config.ops), steps=config.nodes,
            dtype=kernels.dtype_from_name(config.dtype))

    def edges(self, nodes: int) -> tuple[tuple[int, int], ...]:
        """The (source, node) of every edge of a cell (sources 0, 1: the cell's inputs)."""
        return tuple(genotypes.edge_list(nodes))

    def edge_labels(self, nodes: int) -> tuple[str, ...]:
        """``source -> state`` of every edge, in states (node i is state i + 2)."""
        return tuple(f"{source} -> {node + 2}" for source, node in self.edges(nodes))

    def evaluation_network(self, genotype: dict[str, Any], num_classes: int, *,
                           network: str = "cifar", channels: int | None = None,
                           layers: int | None = None, auxiliary: bool = True,
                           dtype: Any = jnp.float32) -> nn.Module:
        """The network that trains the found cell (DARTS's, :mod:`xnas_jax.spaces.darts.evalnet`):
        ``network`` is its variant, cifar or imagenet."""
        return evalnet.build_network(genotypes.genotype_from_dict(genotype), num_classes,
                                     variant=network, channels=channels, layers=layers,
                                     auxiliary=auxiliary, dtype=dtype)

    def read_genotype(self, source: str | Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        """A published name (any case), or a JSON object of
        :func:`genotypes.genotype_to_dict`'s form (the one a DARTS search writes)."""
        if isinstance(source, Mapping):
            return genotypes.genotype_to_dict(genotypes.genotype_from_dict(source)), "custom"
        names = {name.lower(): name for name in genotypes.PUBLISHED}
        name = names.get(source.strip().lower())
        if name is None:
            return None
        return genotypes.genotype_to_dict(genotypes.PUBLISHED[name]), name

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
            drawing.plot_cell(genotype, cell, folder / f"{cell}.png")
        return genotypes.genotype_to_dict(genotype, config.ops)

    def pictures(self) -> tuple[str, ...]:
        return tuple(f"{cell}.png" for cell in self.cell_types)

    def files(self) -> tuple[str, ...]:
        """The files :meth:`write` writes."""
        return ("genotype.json", "genotype.txt", "genotype.py", *self.pictures())
