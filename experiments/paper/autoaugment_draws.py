"""AutoAugment draws: one CIFAR-10 image and 16 draws of the CIFAR-10 policy.

A look at what ``xnas_jax.data.autoaugment`` does to a training image: the policy of
Cubuk et al. (2018) picks one of 25 sub-policies per image and applies each of
its two operations with its probability, so some draws come back unchanged.
Each panel's title names the operations that were applied.  The image is read
from the JPEG CIFAR-10 archive (``train/<class>/NNNN.jpg`` inside
``train.zip``) in ``--data-dir``: by default ``$XNAS_DATA_DIR``, else
``data/cifar10_jpeg`` in the current directory.

Run: ``python -m experiments.paper.autoaugment_draws [--data-dir DIR] [--member NAME]
[--seed 0] [--out experiments/results]``; writes ``autoaugment_draws.png``.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from typing import Sequence

import jax
import numpy as np

import experiments
from xnas_jax import cli
from xnas_jax.data import autoaugment as aa

NAME = "autoaugment_draws"
DEFAULT_MEMBER = "train/horse/0004.jpg"
NUM_DRAWS = 16


def load_image(zip_path: str | os.PathLike, member: str) -> np.ndarray:
    """One JPEG from the archive as a uint8 (H, W, 3) RGB array."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as archive:
        data = archive.read(member)
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def draw(image: np.ndarray, seed: int, num_draws: int = NUM_DRAWS) -> tuple[np.ndarray, list[str]]:
    """``num_draws`` augmented copies of ``image`` and, for each, the ops that were applied."""
    batch = np.repeat(image[None], num_draws, axis=0)
    augmented, applied, policy = aa.autoaugment_with_record(jax.random.key(seed), batch)
    labels = []
    for ops, sub in zip(np.asarray(applied), np.asarray(policy)):
        names = [aa.OP_NAMES[op] for op in ops if op >= 0]
        labels.append(f"#{sub}: " + (" + ".join(names) if names else "unchanged"))
    return np.asarray(augmented), labels


def plot(original: np.ndarray, augmented: np.ndarray, labels: list[str], member: str,
         path: str) -> None:
    """The original and the draws in a grid of 3 rows of 6, upsampled without smoothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = -(-(1 + len(augmented)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows))
    panels = [(original, f"original\n{member.split('/', 1)[-1]}")]
    panels += [(image, label.replace(": ", "\n", 1)) for image, label in zip(augmented, labels)]
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, title) in zip(axes.flat, panels):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle("AutoAugment CIFAR-10 policy (Cubuk et al., 2018): 16 draws "
                 "(#k: sub-policy, 0-based; then the ops applied)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Loads the image, draws, and writes ``NAME.png`` into ``--out``."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    experiments.add_data_dir(parser)
    parser.add_argument("--member", default=DEFAULT_MEMBER,
                        help="JPEG inside the data's train.zip (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default: %(default)s)")
    experiments.add_out(parser)
    args = parser.parse_args(argv)
    (archive,) = experiments.data_files(args.data_dir, "train.zip")
    try:
        original = load_image(archive, args.member)
    except KeyError:
        cli.fail(f"{args.member} is not in {archive}")
    augmented, labels = draw(original, args.seed)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{NAME}.png")
    plot(original, augmented, labels, args.member, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
