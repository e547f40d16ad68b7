"""The search step: one network-weight step and one architecture step, jitted as one.

First-order alternating optimization (XNAS paper section 4.1, Algorithm 1):

1. line 4: the network weights w descend the training loss on a batch of the
   weight half of the data (SGD with momentum, weight decay, gradient clip);
2. lines 5-13: the supernet predicts a batch of the architecture half with
   the updated w; autodiff through the ``arch`` collection, with one copy of
   u per image and per cell, gives every feedback's loss gradient, and
   :func:`xnas_jax.xnas` (``feedback_axes=2``) clips each reward to
   [-L, L] and plays their sum as one round, per cell type (the DARTS
   baseline takes the batch's ``dL_val/du`` instead).  The state also
   accumulates the rewards, which the genotype ranks edges by.

Batch norm runs in training mode in both passes (as in DARTS's search) and its
running statistics follow both.  Everything -- batch gathering from the
device-resident dataset, augmentation, normalization, both passes, both
optimizer updates -- is one jitted function with the state donated.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xnas_jax import feedback, optimizers, parallel
from xnas_jax.data import augment, shards
from xnas_jax.prng import KEY_IMPL, prng_key
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xnas_jax.spaces import ARCH
from xnas_jax.spaces.darts.supernet import SearchNetwork


class SearchState(NamedTuple):
    """Everything a search step changes (and a checkpoint holds)."""

    step: jax.Array  # shape=(), int32: search steps taken.
    params: Any  # network weights w.
    batch_stats: Any  # BN running statistics.
    arch: Any  # {"normal": (E, N), "reduce": (E, N)} mixture weights u.
    weight_opt_state: optax.OptState
    arch_opt_state: optax.OptState
    # {"normal": (E, N), "reduce": (E, N)}, float32: each expert's rewards
    # summed over the search while it was active (clipped per feedback when a
    # reward bound is set); the evidence the genotype ranks edges by.
    rewards: Any


# Version of the search state's tree, part of a search checkpoint's
# fingerprint: 2 = with the accumulated rewards; 3 = a leading seed axis on
# every leaf (several searches in one state, :func:`create_search_states`); 4 = one
# xnas state over all cell types (per-feedback rewards inside the transform).
STATE_LAYOUT = 4


def seed_keys(seeds) -> np.ndarray:
    """The (S, 4) raw data of each search's root key, ``prng_key(seed)``.

    Keys enter the jitted programs as raw data on the mesh, and are wrapped
    inside them.
    """
    return np.stack([np.asarray(jax.random.key_data(prng_key(int(s)))) for s in seeds])


class Preprocess(NamedTuple):
    """How the step turns uint8 batches into network inputs (static)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # 0: no random crop
    flip: bool


def xnas_arch_optimizer(
    num_experts: int,
    replicas: dict[str, int],
    total_steps: int,
    feedbacks_per_step: int,
    reward_bound: float = 1.0,
    wipeout_factor: float = 1.0,
    learning_rates: dict[str, float | None] | None = None,
) -> tuple[optax.GradientTransformation, dict[str, float]]:
    """XNAS on the search's per-feedback gradients: one round per step, eta* per cell type.

    The paper counts one feedback per image and per cell: a forecaster of cell
    type c, shared by ``r_c`` cells, receives ``T_c = d * E * r_c`` feedbacks
    over E epochs of d validation images (section 3.1), each a reward in
    ``[-L, L]``, and ``eta*_c = sqrt(2 ln N / (T_c L^2))`` (eq. 4).  A search
    step with a batch of B images delivers ``F_c = B * r_c`` feedbacks at once:
    the step hands :func:`xnas_jax.xnas` the (r_c, B, E, N) gradients of
    every image in every cell (``feedback_axes=2``), which clips each
    feedback (Algorithm 1 line 9) and plays them as one round, with the
    wipeout margin ``2 eta L F_c (T - t) zeta`` of Lemma 1 counted in steps.

    Args:
      num_experts: N, the experts searched.
      replicas: per cell type, r_c (the supernet's ``feedback_replicas()``).
      total_steps: search steps of the run (the rounds T).
      feedbacks_per_step: B, validation images per step.
      reward_bound: L, the bound of one feedback's reward.
      wipeout_factor: zeta.
      learning_rates: per cell type, a rate to use instead of eta*_c.

    Returns:
      The transform and the learning rate of each cell type.
    """
    given = {kind: (learning_rates or {}).get(kind) for kind in replicas}
    rates = {kind: float(given[kind]) if given[kind] is not None
             else optimizers.theoretical_learning_rate(
                 num_experts, total_steps, reward_bound, feedbacks_per_step * replicas[kind])
             for kind in replicas}
    return optimizers.xnas(given, reward_bound, total_steps, wipeout_factor,
                           feedback_axes=2), rates


def feedback_rewards(
    grads: dict[str, jax.Array], active: dict[str, jax.Array], reward_bound: float | None
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The round's summed rewards of the active experts, and how often the clip bound.

    ``grads`` are each feedback's own loss gradient ``dl_b/du`` in cell c,
    (r_c, B, E, N): ``-grads[c, b]`` is the reward ``R_i = -<dl_b/dp, f_i>``
    (Algorithm 1 line 8; in training-mode batch norm ``l_b`` includes its
    effect through the batch statistics).  The sum of the clipped rewards
    (line 9) is :func:`xnas_jax.round_rewards`, the code :func:`xnas_jax.xnas`
    runs.  Experts that are no longer active get no reward.

    Args:
      grads: per cell type, (r_c, B, E, N) per-feedback gradients.
      active: per cell type, the (E, N) active masks of this round.
      reward_bound: L; None sums the rewards unclipped.

    Returns:
      ``(summed, clipped)``: per cell type, the (E, N) summed rewards, and the
      fraction of the active experts' feedbacks that the clip changed.
    """
    rewards = optimizers.round_rewards(grads, reward_bound, feedback_axes=2)
    summed = {kind: jnp.where(active[kind], r, 0.0) for kind, r in rewards.items()}
    clipped = {}
    for kind, g in grads.items():
        over = (jnp.abs(g) > reward_bound if reward_bound is not None
                else jnp.zeros(g.shape, bool))
        count = jnp.maximum(active[kind].sum() * g.shape[0] * g.shape[1], 1)
        clipped[kind] = jnp.sum(over & active[kind]) / count
    return summed, clipped


def arch_round(
    arch_tx: optax.GradientTransformation,
    feedback_clip: float | None,
    feedback_grads: dict[str, jax.Array],
    arch: dict[str, jax.Array],
    opt_state: optax.OptState,
    totals: dict[str, jax.Array],
) -> tuple[tuple[Any, optax.OptState, Any], dict[str, jax.Array]]:
    """One architecture round (Algorithm 1 lines 8-13) of the search step.

    ``feedback_grads`` are each image's own validation-loss gradient
    ``dl_b/du`` in each cell, (r_c, B, E, N)
    (:func:`xnas_jax.feedback.feedback_value_and_grad`).  With a
    ``feedback_clip`` L, ``arch_tx`` (:func:`xnas_arch_optimizer`) receives
    them and clips each reward itself; without, it receives the batch's
    ``dL/du``, their mean (the softmax baseline).  The
    active experts come from ``opt_state``, never from ``u > 0``.

    Returns:
      ``((arch, opt_state, totals), metrics)``: the new mixture weights, the
      optimizer state, the rewards accumulated over the search, and the
      round's metrics (largest reward, clipped fraction and active experts
      per cell type).
    """
    active = optimizers.active_experts(opt_state)
    summed, clipped = feedback_rewards(feedback_grads, active, feedback_clip)
    if feedback_clip is None:
        grads = {k: g.sum((0, 1)) / g.shape[1] for k, g in feedback_grads.items()}
    else:
        grads = feedback_grads
    updates, opt_state = arch_tx.update(grads, opt_state, arch)
    arch = optax.apply_updates(arch, updates)
    totals = jax.tree.map(jnp.add, totals, summed)
    reward_max = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in feedback_grads.values()]))
    metrics = {"reward_abs_max": reward_max,
               **{f"clipped_{k}": v for k, v in clipped.items()},
               **{f"active_{k}": jnp.sum(m)
                  for k, m in optimizers.active_experts(opt_state).items()}}
    return (arch, opt_state, totals), metrics


def create_search_state(
    key: jax.Array,
    model: SearchNetwork,
    image_shape: tuple[int, int, int],
    weight_tx: optax.GradientTransformation,
    arch_tx: optax.GradientTransformation,
) -> SearchState:
    """One search's initial state: the supernet (uniform u) and both optimizer states.

    Traceable (jit and vmap it; :func:`create_search_states` does both).
    """
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    variables = model.init(key, dummy, train=True)
    params, arch = variables["params"], variables[ARCH]
    return SearchState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        arch=arch,
        weight_opt_state=weight_tx.init(params),
        arch_opt_state=arch_tx.init(arch),
        rewards=jax.tree.map(jnp.zeros_like, arch),
    )


def create_search_states(
    key_data: np.ndarray,
    model: SearchNetwork,
    image_shape: tuple[int, int, int],
    weight_tx: optax.GradientTransformation,
    arch_tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
) -> SearchState:
    """The initial states of S searches, stacked on a leading seed axis.

    ``key_data`` is the (S, 4) raw data of each search's root key
    (:func:`seed_keys`).  One jitted program, run once per seed (built
    eagerly, the optimizers' states would compile one small program per leaf
    shape); the states are then placed on the mesh, split over ``seed``.  Seed
    s's state is exactly :func:`create_search_state` of its key.
    """
    mesh = mesh or parallel.make_mesh(1, 1)
    create = jax.jit(lambda raw: create_search_state(
        jax.random.wrap_key_data(raw, impl=KEY_IMPL), model, image_shape, weight_tx, arch_tx))
    # Each seed on one device, then spread: "rbg" draws depend on how a
    # program is partitioned, and a search must not depend on the mesh.
    states = [parallel.to_host(create(raw)) for raw in np.asarray(key_data)]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *states)
    return jax.tree.map(lambda a: parallel.global_array(a, parallel.seed_sharding(mesh)), stacked)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def preprocess_batch(key: jax.Array, images: jax.Array, config: Preprocess,
                     draws: Callable[[Callable], Callable] | None = None) -> jax.Array:
    """Augments (crop with padding, flip) uint8 images and normalizes them.

    ``draws`` wraps the random draws (see :func:`xnas_jax.data.augment.augment`).
    """
    if config.crop_padding or config.flip:
        images = augment.augment(key, images, config.crop_padding, config.flip, draws=draws)
    return augment.normalize(images, jnp.asarray(config.mean), jnp.asarray(config.std))


def vmap_seeds(fn: Callable[..., Any], block: int) -> Callable[..., Any]:
    """``fn`` over the leading seed axis of a block of ``block`` seeds (one device group's).

    A block of several seeds is vmapped; a block of one seed runs ``fn``
    unbatched (the seed axis taken off the arguments and put back on the
    results), the program a one-seed search runs.  Why not vmap a block of
    one: it gives every tensor a unit leading axis, and XLA's CPU backend
    (jaxlib 0.10.2, its YNNPACK reduce fusion) dies with a segmentation fault
    on a product of two rank-7 operands with a unit axis summed over one
    middle axis -- which the cell's input edges make in the backward pass
    (seed 1 x nodes x inputs x B x H x W x C, summed over the nodes that read
    each input).  See docs/reliability.md and tests/test_xla_crash.py.
    """
    if block != 1:
        return jax.vmap(fn)

    def one(*args):
        return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], args)))

    return one


def make_search_step(
    model: SearchNetwork,
    weight_tx: optax.GradientTransformation,
    arch_tx: optax.GradientTransformation,
    preprocess: Preprocess,
    feedback_clip: float | None = None,
    single_trace: bool = False,
    mesh: Mesh | None = None,
    warmup_steps: int = 0,
) -> Callable[..., tuple[SearchState, dict[str, jax.Array]]]:
    """Builds the jitted ``step(states, data, weight_idx, arch_idx, keys)`` of S searches.

    ``states`` are S search states stacked on a leading seed axis
    (:func:`create_search_states`), ``data`` the training set's shards on
    the devices (:class:`shards.DeviceShards`), ``weight_idx`` / ``arch_idx``
    the (S, B) per-device indices of each search's two batches
    (:meth:`shards.ShardLayout.device_indices`: each search has its own
    split and order), and ``keys`` the
    (S,) base PRNG keys, folded with the state's step count for the step's
    augmentation.  The metrics have a leading seed axis too.

    On ``mesh`` (default: one device) the seeds are split over its ``seed``
    axis and vmapped within it; each batch is split over ``data`` and every
    batch reduction (loss, batch-norm moments, summed rewards) is over the
    global batch.  One search (S = 1) runs the plain step, without vmap.
    The state is donated.

    The architecture pass differentiates the validation loss with respect to
    one copy of u per feedback (:func:`xnas_jax.feedback.per_feedback`), so
    every image's reward in every cell is known (:func:`feedback_rewards`).

    Args:
      model: the supernet (with the experts to compute).
      weight_tx: the network-weight optimizer.
      arch_tx: the architecture optimizer (on the ``arch`` collection).
      preprocess: augmentation and normalization of the uint8 batches.
      feedback_clip: XNAS's L: each feedback's reward is clipped to [-L, L]
        and ``arch_tx`` receives the negated sum of the clipped rewards
        (:func:`xnas_arch_optimizer`).  None: ``arch_tx`` receives ``dL/du``
        of the batch-mean loss (the DARTS baseline).
      single_trace: run the two passes as the two iterations of one loop, so
        the supernet's forward and backward pass is traced and compiled once
        instead of twice.  Each iteration then differentiates with respect to
        both w and u and keeps the gradient it needs, so a step does the
        unused gradient's work as well.  Same results either way.
      warmup_steps: the first steps train the network weights only: the
        architecture state (u, its optimizer's state and the accumulated
        rewards) is kept as it was, so u stays at its initial weights.

    Returns:
      The jitted step, returning the new state and a dict of metrics.
    """

    def loss_fn(params, arch, batch_stats, images, labels):
        logits, updates = model.apply(
            {"params": params, ARCH: arch, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        loss = cross_entropy(logits, labels)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, (accuracy, updates["batch_stats"])

    def weight_update(grads, state_parts):
        params, opt_state = state_parts
        updates, opt_state = weight_tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def arch_update(feedback_grads, state_parts, step):
        new_parts, metrics = arch_round(arch_tx, feedback_clip, feedback_grads, *state_parts)
        if warmup_steps:  # no round is played during the warm-up
            new_parts = jax.tree.map(lambda old, new: jnp.where(step < warmup_steps, old, new),
                                     state_parts, new_parts)
        return new_parts, metrics

    def two_passes(state: SearchState, train, val):
        # Algorithm 1 line 4: update w on the training loss.
        (train_loss, (train_acc, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params, state.arch, state.batch_stats, *train)
        params, weight_opt_state = weight_update(grads, (state.params, state.weight_opt_state))
        # Lines 5-13: predict the validation batch, per-feedback rewards, EG + wipeout.
        (val_loss, (val_acc, batch_stats)), arch_grads = feedback.feedback_value_and_grad(
            lambda copies: loss_fn(params, copies, batch_stats, *val), state.arch,
            val[0].shape[0], model.feedback_replicas(), has_aux=True)
        arch_parts, arch_metrics = arch_update(
            arch_grads, (state.arch, state.arch_opt_state, state.rewards), state.step)
        metrics = dict(train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                       val_accuracy=val_acc, **arch_metrics)
        return (params, batch_stats, weight_opt_state) + arch_parts, metrics

    def one_loop(state: SearchState, train, val):
        # The same two passes as the iterations 0 (w) and 1 (u) of one loop.
        def body(carry, xs):
            weights, batch_stats, archs = carry
            is_arch, images, labels = xs
            batch = images.shape[0]
            copies = feedback.per_feedback(archs[0], batch, model.feedback_replicas())
            (loss, (accuracy, batch_stats)), (grads, arch_grads) = jax.value_and_grad(
                loss_fn, argnums=(0, 1), has_aux=True
            )(weights[0], copies, batch_stats, images, labels)
            arch_grads = jax.tree.map(lambda g: batch * g, arch_grads)  # each image's dl_b/du
            pick = lambda old, new: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(is_arch, a, b), old, new
            )
            weights = pick(weights, weight_update(grads, weights))
            new_archs, arch_metrics = arch_update(arch_grads, archs, state.step)
            archs = pick(new_archs, archs)
            return (weights, batch_stats, archs), (loss, accuracy, arch_metrics)

        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), train, val)
        carry = (
            (state.params, state.weight_opt_state),
            state.batch_stats,
            (state.arch, state.arch_opt_state, state.rewards),
        )
        carry, (losses, accuracies, arch_metrics) = jax.lax.scan(
            body, carry, (jnp.array([False, True]), *stacked)
        )
        (params, weight_opt_state), batch_stats, arch_parts = carry
        metrics = dict(train_loss=losses[0], train_accuracy=accuracies[0], val_loss=losses[1],
                       val_accuracy=accuracies[1], **jax.tree.map(lambda m: m[1], arch_metrics))
        return (params, batch_stats, weight_opt_state) + arch_parts, metrics

    mesh = mesh or parallel.make_mesh(1, 1)
    split_batch = NamedSharding(mesh, P(parallel.DATA))
    # Every device draws all of a batch's random numbers, as one device
    # would: "rbg" draws that GSPMD splits over devices come out different.
    replicate = lambda draw: jax.shard_map(draw, mesh=mesh, in_specs=P(),  # noqa: E731
                                           out_specs=P(), check_vma=False)

    def batches(gathered, key_data, count):
        """One search's two preprocessed batches; the key is folded with the step count."""
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=KEY_IMPL), count)
        return tuple((preprocess_batch(half_key, images, preprocess, replicate), labels)
                     for half_key, (images, labels) in zip(jax.random.split(key), gathered))

    def update(state: SearchState, train, val):
        passes = one_loop if single_trace else two_passes
        (params, batch_stats, weight_opt_state, arch, arch_opt_state, rewards), metrics = passes(
            state, train, val
        )
        new_state = SearchState(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            arch=arch,
            weight_opt_state=weight_opt_state,
            arch_opt_state=arch_opt_state,
            rewards=rewards,
        )
        return new_state, metrics

    def seeded(states, data, weight_idx, arch_idx, keys):
        # Each device takes its part of every search's batches from its own data shards.
        gathered = [shards.gather(data, idx, mesh) for idx in (weight_idx, arch_idx)]
        one_seed = lambda s: [jax.lax.with_sharding_constraint(  # noqa: E731
            (images[s], labels[s]), split_batch) for images, labels in gathered]
        if weight_idx.shape[0] == 1:  # one search: the plain step, with an axis of 1
            plain = lambda state: update(state, *batches(one_seed(0), keys[0], state.step))  # noqa: E731
            return vmap_seeds(plain, 1)(states)
        # The random draws of each seed outside vmap: batched "rbg" keys draw
        # other numbers than the same keys one at a time, and a search must
        # not depend on the seeds it runs beside.
        per_seed = [batches(one_seed(s), keys[s], states.step[s])
                    for s in range(weight_idx.shape[0])]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_seed)
        stacked = jax.lax.with_sharding_constraint(
            stacked, parallel.batch_sharding(mesh, seeded=True))
        # Each device group vmaps its own seeds (shard_map over ``seed``; the
        # batch stays split over ``data`` by GSPMD): left to GSPMD, the seed
        # axis that vmap folds into the convolutions' feature groups was
        # partitioned wrongly (XLA CPU, jax 0.10.2: other losses).  A group
        # of one seed runs the plain step (:func:`vmap_seeds`: XLA crashes).
        by_seed = P(parallel.SEED)
        block = weight_idx.shape[0] // mesh.shape[parallel.SEED]
        return jax.shard_map(vmap_seeds(update, block), mesh=mesh,
                             in_specs=(by_seed, by_seed, by_seed),
                             out_specs=by_seed, axis_names={parallel.SEED},
                             check_vma=False)(states, *stacked)

    seeds = parallel.seed_sharding(mesh)
    indices = parallel.batch_sharding(mesh, seeded=True)
    data_blocks = NamedSharding(mesh, P(parallel.DATA))
    return jax.jit(seeded, in_shardings=(seeds, data_blocks, indices, indices, seeds),
                   out_shardings=(seeds, seeds), donate_argnums=(0,))


def computed_experts(
    ops: tuple[str, ...], active: dict[str, Any]
) -> dict[str, tuple[str, ...]]:
    """Per cell type, the experts active on at least one edge (of any seed).

    The others are wiped out on every edge and can be left out of the supernet
    without changing its outputs or gradients.  ``active`` holds the (E, N) or
    (S, E, N) masks of the optimizer's state (:func:`xnas_jax.active_experts`),
    as NumPy or device arrays: an active expert whose u underflowed to 0 is
    still computed, so that it keeps its rewards.
    """
    result = {}
    for kind in active:
        table = np.asarray(parallel.to_host(active[kind]))
        alive = table.reshape(-1, table.shape[-1]).any(axis=0)
        result[kind] = tuple(name for name, keep in zip(ops, alive) if keep)
    return result


def expert_weights_entropy(arch: dict[str, Any]) -> float:
    """Mean normalized entropy H(u) / ln N over all forecasters (paper Figure 2)."""
    rows = np.concatenate([np.asarray(jax.device_get(arch[k])) for k in sorted(arch)])
    return float(np.mean(optimizers.normalized_entropy(rows)))


def with_computed(model: nn.Module, computed: dict[str, tuple[str, ...]]) -> nn.Module:
    """The same supernet evaluating only ``computed`` experts per cell type."""
    return model.with_computed(computed)
