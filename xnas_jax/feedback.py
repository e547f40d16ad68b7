"""Per-feedback gradients: what :func:`xnas_jax.xnas` takes with ``feedback_axes``.

XNAS clips every feedback's reward on its own (Algorithm 1 line 9), so it
needs one loss gradient per feedback, not the batch's.  A feedback is one
image's loss through one forecaster (section 3.1): ``R_i = -dl_b/du_i``.
Two routes give those gradients.

* **Per-image tables** (:func:`feedback_value_and_grad`).  The model reads
  each mixture-weight table of its ``arch`` collection either as ``(E, N)``
  or, per image, as ``(B, E, N)`` and mixes image b's experts with row b:
  ``p_b = sum_i u[b, i] f_i(x_b)``.  Its output does not change when every
  row holds the same u, and the gradient of the batch-summed loss with
  respect to row b is image b's own ``dl_b/du``.  A table shared by ``r``
  cells (a DARTS cell type, ``r_c`` in the paper) is read as ``(r, B, E, N)``,
  one copy per cell, so that each cell's feedback is its own.  One backward
  pass gives every feedback.  In training-mode batch norm, feedback b also
  carries image b's effect on the other images through the batch statistics.
* **Plain JAX** for a model without per-image tables:
  ``jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(u, images, labels)``
  differentiates each example's loss on its own, (B, *u.shape), which is
  ``feedback_axes=1``.  Weights shared by several cells then give one summed
  feedback per image, not one per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["per_feedback", "feedback_value_and_grad"]


def per_feedback(arch: Mapping[str, jax.Array], batch_size: int,
                 replicas: Mapping[str, int] | None = None) -> dict[str, jax.Array]:
    """One copy of each table per feedback: ``(B, E, N)``, or ``(r, B, E, N)`` for r cells.

    Args:
      arch: the mixture-weight tables by name (the ``arch`` collection).
      batch_size: B, the images of the batch.
      replicas: per table, the cells r that share it; None: one cell each,
        and copies of shape ``(B, E, N)``.

    Returns:
      The copies, by name; each holds the table unchanged.
    """
    if replicas is None:
        return {kind: jnp.broadcast_to(u, (batch_size, *u.shape)) for kind, u in arch.items()}
    missing = set(arch) - set(replicas)
    if missing:
        raise ValueError(f"replicas has no count for the tables {sorted(missing)}")
    return {kind: jnp.broadcast_to(u, (replicas[kind], batch_size, *u.shape))
            for kind, u in arch.items()}


def feedback_value_and_grad(
    loss_fn: Callable[..., Any],
    arch: Mapping[str, jax.Array],
    batch_size: int,
    replicas: Mapping[str, int] | None = None,
    has_aux: bool = False,
) -> tuple[Any, dict[str, jax.Array]]:
    """The batch-mean loss and every feedback's own gradient ``dl_b/du``.

    ``loss_fn(copies)`` evaluates the model with the per-feedback copies of
    :func:`per_feedback` in its ``arch`` collection and returns the mean loss
    over the batch (and an auxiliary value when ``has_aux``).  The gradient
    of the mean with respect to copy b, times B, is image b's own gradient:
    these are the gradients :func:`xnas_jax.xnas` takes with
    ``feedback_axes=1`` (``replicas`` None) or ``feedback_axes=2``.

    Args:
      loss_fn: copies -> mean loss, or (mean loss, aux) with ``has_aux``.
      arch: the mixture-weight tables u by name.
      batch_size: B.
      replicas: per table, the cells that share it (see :func:`per_feedback`).
      has_aux: whether ``loss_fn`` returns an auxiliary value too.

    Returns:
      ``(value, grads)``: ``loss_fn``'s value, and per table the gradients of
      shape ``(B, E, N)`` or ``(r, B, E, N)``.
    """
    copies = per_feedback(arch, batch_size, replicas)
    value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(copies)
    return value, jax.tree.map(lambda g: batch_size * g, grads)
