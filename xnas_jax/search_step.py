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
running statistics follow both.

The parts: :func:`search_update` is one search's step on preprocessed
batches, a pure function; :class:`ArchMethod` (:func:`make_arch_method`) is
everything that differs between XNAS and the softmax baseline;
:func:`make_search_step` composes them with the batch gathering from the
device-resident dataset, augmentation and normalization, and runs several
searches at once on a mesh (:func:`xnas_jax.parallel.seeded_step`): one
jitted function with the state donated.  :func:`create_train_state` builds a
config's initial states and its :class:`SearchSteps` (the optimizers, the
step compiled for each set of surviving experts, each epoch's batches), and
:func:`host_results` reads what the reports need back to the host.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xnas_jax import feedback, optimizers, parallel, prng
from xnas_jax.data import augment, loading, shards
from xnas_jax.prng import KEY_IMPL
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xnas_jax.spaces import ARCH
from xnas_jax.spaces.darts.supernet import SearchNetwork

if TYPE_CHECKING:
    from xnas_jax.configs import SearchConfig


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


class Preprocess(NamedTuple):
    """How the step turns uint8 batches into network inputs (static)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # 0: no random crop
    flip: bool


class ArchMethod(NamedTuple):
    """A search's architecture method: XNAS or the softmax (DARTS) baseline, built once.

    Everything that differs between the two lives here, so that the step
    (:func:`search_update`) and the discretization take one object: the
    optimizer of the mixture weights, what it receives, its learning rates,
    and the evidence the genotype ranks edges by.  Bind it into the function
    that is jitted (a closure or ``functools.partial``): it holds dicts, so it
    cannot be a static argument.
    """

    name: str  # "xnas" or "darts"
    tx: optax.GradientTransformation  # on the ``arch`` collection
    # XNAS's L: ``tx`` receives every feedback's own gradient and clips each
    # reward to [-L, L] (Algorithm 1 line 9).  None: ``tx`` receives the
    # batch's dL/du (the softmax baseline), and the rewards are summed unclipped.
    feedback_clip: float | None
    learning_rates: dict[str, float]  # per cell type, the rate ``tx`` uses

    def selection_evidence(self, rewards: Any) -> Any | None:
        """The evidence the genotype ranks edges by (:func:`selection_evidence`)."""
        return selection_evidence(self.name, rewards)


def weight_schedule(config: Any, total_steps: int) -> optax.Schedule:
    """The network weights' learning rate at each step: DARTS's cosine annealing."""
    return optax.cosine_decay_schedule(
        config.learning_rate, max(total_steps, 1),
        alpha=config.learning_rate_min / config.learning_rate)


def selection_evidence(method: str, rewards: Any) -> Any | None:
    """What a search's genotype ranks edges by: the accumulated rewards, or None for u.

    XNAS ranks by the rewards each expert accumulated while active: at the
    horizon the wipeout leaves one-hot weights (Algorithm 1 lines 12-13),
    which tie every edge.  The softmax baseline keeps DARTS's rule, the
    largest weight u.
    """
    if method not in ("xnas", "darts"):
        raise ValueError(f"unknown architecture method {method!r}")
    return rewards if method == "xnas" else None


def xnas_method(
    num_experts: int,
    replicas: dict[str, int],
    total_steps: int,
    feedbacks_per_step: int,
    reward_bound: float = 1.0,
    wipeout_factor: float = 1.0,
    learning_rates: dict[str, float | None] | None = None,
) -> ArchMethod:
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
      total_steps: search steps that play a round (the rounds T).
      feedbacks_per_step: B, validation images per step.
      reward_bound: L, the bound of one feedback's reward.
      wipeout_factor: zeta.
      learning_rates: per cell type, a rate to use instead of eta*_c.

    Returns:
      The method, with the learning rate of each cell type.
    """
    given = {kind: (learning_rates or {}).get(kind) for kind in replicas}
    rates = {kind: float(given[kind]) if given[kind] is not None
             else optimizers.theoretical_learning_rate(
                 num_experts, total_steps, reward_bound, feedbacks_per_step * replicas[kind])
             for kind in replicas}
    tx = optimizers.xnas(given, reward_bound, total_steps, wipeout_factor, feedback_axes=2)
    return ArchMethod("xnas", tx, reward_bound, rates)


def make_arch_method(config: SearchConfig, replicas: dict[str, int],
                     total_steps: int) -> ArchMethod:
    """The architecture method of a (resolved) search config: XNAS (:func:`xnas_method`),
    or the DARTS baseline, Adam on softmax logits (:func:`xnas_jax.darts`) on the
    batch's dL/du.

    ``replicas`` are the cells r_c that share each cell type's mixture
    weights (the supernet's ``feedback_replicas()``), ``total_steps`` the
    steps that play architecture rounds (those after the warm-up): XNAS's
    horizon T.  ``--reward-bound`` enters the search here only.
    """
    if config.optimizer == "xnas":
        return xnas_method(
            num_experts=len(config.ops), replicas=replicas, total_steps=total_steps,
            feedbacks_per_step=config.batch_size, reward_bound=config.reward_bound,
            wipeout_factor=config.wipeout_factor,
            learning_rates={"normal": config.arch_learning_rate_normal,
                            "reduce": config.arch_learning_rate_reduce,
                            "cell": config.arch_learning_rate_normal})
    if config.optimizer != "darts":
        raise ValueError(f"unknown --optimizer {config.optimizer!r}")
    return ArchMethod("darts", optimizers.darts(config.darts_learning_rate,
                                                config.darts_weight_decay), None,
                      {kind: config.darts_learning_rate for kind in replicas})


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
    method: ArchMethod,
    feedback_grads: dict[str, jax.Array],
    arch: dict[str, jax.Array],
    opt_state: optax.OptState,
    totals: dict[str, jax.Array],
) -> tuple[tuple[Any, optax.OptState, Any], dict[str, jax.Array]]:
    """One architecture round (Algorithm 1 lines 8-13) of the search step.

    ``feedback_grads`` are each image's own validation-loss gradient
    ``dl_b/du`` in each cell, (r_c, B, E, N)
    (:func:`xnas_jax.feedback.feedback_value_and_grad`).  With a
    ``method.feedback_clip`` L, ``method.tx`` (:func:`xnas_method`) receives
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
    summed, clipped = feedback_rewards(feedback_grads, active, method.feedback_clip)
    if method.feedback_clip is None:
        grads = {k: g.sum((0, 1)) / g.shape[1] for k, g in feedback_grads.items()}
    else:
        grads = feedback_grads
    updates, opt_state = method.tx.update(grads, opt_state, arch)
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
    (:func:`xnas_jax.prng.seed_keys`).  One jitted program, run once per seed (built
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


def _supernet_loss(model: nn.Module, params: Any, arch: Any, batch_stats: Any,
                   images: jax.Array, labels: jax.Array) -> tuple[jax.Array, tuple[Any, Any]]:
    """The batch-mean loss in training mode, with the accuracy and the new BN statistics."""
    logits, updates = model.apply(
        {"params": params, ARCH: arch, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
    )
    loss = cross_entropy(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (accuracy, updates["batch_stats"])


def search_update(
    state: SearchState,
    train_batch: tuple[jax.Array, jax.Array],
    val_batch: tuple[jax.Array, jax.Array],
    *,
    model: nn.Module,
    method: ArchMethod,
    weight_tx: optax.GradientTransformation,
    warmup_steps: int = 0,
) -> tuple[SearchState, dict[str, jax.Array]]:
    """One search step on preprocessed batches: the weight pass, then the architecture round.

    A pure function of one search's state and its two batches of
    ``(images, labels)`` (normalized float images; :func:`preprocess_batch`),
    in the form of the Flax examples' ``train_step``; jit it with the
    keywords bound.  :func:`make_search_step` runs it for each of several
    searches on a mesh, from the device-resident data.

    1. Algorithm 1 line 4: w descends the training loss of ``train_batch``
       (``weight_tx``).
    2. Lines 5-13: the supernet predicts ``val_batch`` with the updated w;
       autodiff through one copy of u per image and per cell
       (:func:`xnas_jax.feedback.feedback_value_and_grad`) gives every
       feedback's gradient, and :func:`arch_round` plays ``method``'s round.

    Batch norm runs in training mode in both passes and its running
    statistics follow both.  During the first ``warmup_steps`` steps no
    round is played: u, its optimizer's state and the accumulated rewards
    are kept as they were.

    Returns:
      The new state (its step count one higher), and the step's metrics:
      both passes' losses and accuracies and the round's metrics.
    """
    loss_fn = functools.partial(_supernet_loss, model)
    # Algorithm 1 line 4: update w on the training loss.
    (train_loss, (train_acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.arch, state.batch_stats, *train_batch)
    updates, weight_opt_state = weight_tx.update(grads, state.weight_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Lines 5-13: predict the validation batch, per-feedback rewards, EG + wipeout.
    (val_loss, (val_acc, batch_stats)), arch_grads = feedback.feedback_value_and_grad(
        lambda copies: loss_fn(params, copies, batch_stats, *val_batch), state.arch,
        val_batch[0].shape[0], model.feedback_replicas(), has_aux=True)
    old_parts = (state.arch, state.arch_opt_state, state.rewards)
    arch_parts, arch_metrics = arch_round(method, arch_grads, *old_parts)
    if warmup_steps:  # no round is played during the warm-up
        arch_parts = jax.tree.map(lambda old, new: jnp.where(state.step < warmup_steps, old, new),
                                  old_parts, arch_parts)
    arch, arch_opt_state, rewards = arch_parts
    new_state = SearchState(step=state.step + 1, params=params, batch_stats=batch_stats,
                            arch=arch, weight_opt_state=weight_opt_state,
                            arch_opt_state=arch_opt_state, rewards=rewards)
    metrics = dict(train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                   val_accuracy=val_acc, **arch_metrics)
    return new_state, metrics


def make_search_step(
    model: SearchNetwork,
    weight_tx: optax.GradientTransformation,
    method: ArchMethod,
    preprocess: Preprocess,
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

    Each search's step is :func:`search_update` on its two batches, gathered
    from the device-resident shards and preprocessed (augmented and
    normalized) inside the program; :func:`xnas_jax.parallel.seeded_step`
    runs it for every seed on ``mesh`` (default: one device): seeds split
    over its ``seed`` axis, each batch over ``data``, every batch reduction
    (loss, batch-norm moments, summed rewards) over the global batch.  The
    state is donated.

    Args:
      model: the supernet (with the experts to compute).
      weight_tx: the network-weight optimizer.
      method: the architecture method (:func:`make_arch_method`).
      preprocess: augmentation and normalization of the uint8 batches.
      mesh: the ``seed x data`` mesh.
      warmup_steps: the first steps train the network weights only
        (:func:`search_update`).

    Returns:
      The jitted step, returning the new states and a dict of metrics.
    """
    mesh = mesh or parallel.make_mesh(1, 1)
    update = functools.partial(search_update, model=model, method=method, weight_tx=weight_tx,
                               warmup_steps=warmup_steps)
    split_batch = NamedSharding(mesh, P(parallel.DATA))
    draws = parallel.replicated_draws(mesh)

    def batches(states: SearchState, data, weight_idx, arch_idx, keys):
        """Each search's two preprocessed batches; its key is folded with its step count."""
        # Each device takes its part of every search's batches from its own data shards.
        gathered = [shards.gather(data, idx, mesh) for idx in (weight_idx, arch_idx)]

        def one_seed(s):
            halves = [jax.lax.with_sharding_constraint((images[s], labels[s]), split_batch)
                      for images, labels in gathered]
            key = jax.random.fold_in(jax.random.wrap_key_data(keys[s], impl=KEY_IMPL),
                                     states.step[s])
            return tuple((preprocess_batch(half_key, images, preprocess, draws), labels)
                         for half_key, (images, labels) in zip(jax.random.split(key), halves))

        return [one_seed(s) for s in range(weight_idx.shape[0])]

    seeds = parallel.seed_sharding(mesh)
    indices = parallel.batch_sharding(mesh, seeded=True)
    data_blocks = NamedSharding(mesh, P(parallel.DATA))
    return parallel.seeded_step(update, batches, mesh,
                                arg_shardings=(data_blocks, indices, indices, seeds))


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


def host_results(state: SearchState, method: ArchMethod) -> dict[str, Any]:
    """The searches' results on the host, each with a leading seed axis: the mixture
    weights ``arch``, accumulated ``rewards`` and ``active`` masks per cell type, the
    ``evidence`` the genotype ranks edges by (:meth:`ArchMethod.selection_evidence`;
    None: by u) and ``entropy``, the mean normalized entropy H(u) / ln N over all
    forecasters (paper Figure 2).

    Every process takes part in the read.
    """
    evidence = method.selection_evidence(state.rewards)
    host = parallel.to_host({"arch": state.arch, "rewards": state.rewards, "evidence": evidence,
                             "active": optimizers.active_experts(state.arch_opt_state)})
    rows = np.concatenate([host["arch"][k] for k in sorted(host["arch"])], axis=1)
    return {**host, "entropy": optimizers.normalized_entropy(rows).mean(axis=1)}




def create_train_state(config: SearchConfig, model: SearchNetwork, data: loading.SearchData,
                       mesh: Mesh, log: Callable[[str], None] = print
                       ) -> tuple[SearchState, SearchSteps]:
    """The initial states of a config's searches (seed axis first, split over the mesh's
    ``seed`` axis) and their steps (:class:`SearchSteps`)."""
    steps = SearchSteps(config, model, data, mesh, log)
    state = create_search_states(prng.seed_keys(config.seed_list), model, data.image_shape,
                                 steps.weight_tx, steps.method.tx, mesh)
    return state, steps


class SearchSteps:
    """A config's search: its optimizers, its compiled step (one per set of surviving
    experts) and each epoch's batches.

    The network weights follow DARTS's cosine-annealed SGD over the whole search
    (:func:`weight_schedule`); the architecture method (:func:`make_arch_method`)
    plays its rounds over the steps after the warm-up, XNAS's horizon T.  With
    ``--skip-wiped-out`` the supernet leaves out the experts that are wiped out
    on every edge (of every seed): a smaller program, compiled when the set
    changes.  Steps of an epoch take their batches from the device-resident
    data (:func:`xnas_jax.data.loading.search_batches`).
    """

    def __init__(self, config: SearchConfig, model: SearchNetwork, data: loading.SearchData,
                 mesh: Mesh, log: Callable[[str], None] = print):
        self.config, self.model, self.data, self.mesh, self.log = config, model, data, mesh, log
        total_steps = data.steps_per_epoch * config.epochs
        self.warmup_steps = config.warmup_epochs * data.steps_per_epoch
        self.schedule = weight_schedule(config, total_steps)
        self.method = make_arch_method(config, model.feedback_replicas(),
                                       total_steps - self.warmup_steps)
        # DARTS's search optimizer of the network weights (Algorithm 1 line 4).
        self.weight_tx = optimizers.weight_optimizer(
            self.schedule, momentum=config.momentum, weight_decay=config.weight_decay,
            grad_clip=config.grad_clip)
        self.preprocess = Preprocess(data.mean, data.std, config.crop_padding, bool(config.flip))
        self.keys = parallel.global_array(prng.seed_keys([s + 1 for s in config.seed_list]),
                                          parallel.seed_sharding(mesh))
        self.compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0
        self.computed: dict[str, tuple[str, ...]] = {}  # the experts the last step computes

    def start_epoch(self, epoch: int, state: SearchState):
        """``(step_fn, batch)`` of an epoch (:func:`xnas_jax.loop.run_epochs`):
        ``step_fn(state, *batch(i))`` runs its i-th step."""
        data, config = self.data, self.config
        weight_order, arch_order = loading.search_batches(data, config.seed_list, epoch,
                                                           config.batch_size)
        split = parallel.batch_sharding(self.mesh, seeded=True)

        def batch(i):
            return (data.data, parallel.global_array(weight_order[i], split),
                    parallel.global_array(arch_order[i], split), self.keys)

        return self(state, batch(0)), batch

    def __call__(self, state: SearchState, example_args: tuple[Any, ...]):
        """The compiled step for ``state``'s surviving experts (compiled on first use)."""
        ops = tuple(self.config.ops)
        computed = (computed_experts(ops, optimizers.active_experts(state.arch_opt_state))
                    if self.config.skip_wiped_out else {kind: ops for kind in state.arch})
        key = tuple(computed[kind] for kind in sorted(computed))
        if key not in self.compiled:
            experts = ", ".join(f"{len(v)} {k}" for k, v in computed.items())
            # Tracing and compiling take a minute or more: say so before the wait.
            self.log(f"compiling the search step ({experts} experts)...")
            started = time.perf_counter()
            jitted = make_search_step(self.model.with_computed(computed), self.weight_tx,
                                      self.method, self.preprocess, mesh=self.mesh,
                                      warmup_steps=self.warmup_steps)
            self.compiled[key] = jitted.lower(state, *example_args).compile()
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            self.log(f"compiled the search step ({experts} experts) in {seconds:.1f} s")
        self.computed = computed
        return self.compiled[key]
