"""Search spaces behind one interface (xnas_jax.spaces): the NB201 space searched by the
same step and CLI as DARTS's, the exhaustive table's training, and one-line errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
import pytest

from conftest import assert_usage_error
from experiments import groundtruth, search_quality
from xnas_jax import search, spaces
from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.data import augment
from xnas_jax.prng import prng_key
from xnas_jax.runs import read_log
from xnas_jax.spaces import ARCH
from xnas_jax.spaces.nb201 import NB201Space

NB201_SEARCH = [
    "--space", "nb201", "--nodes", "3", "--channels", "4", "--layers", "1", "--epochs", "2",
    "--batch-size", "16", "--max-steps-per-epoch", "3", "--max-train-examples", "200",
    "--no-progress",
]  # fmt: skip


def run_main(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return (code or 0, *capsys.readouterr())


@pytest.mark.slow
def test_nb201_search_runs_the_same_step_and_writes_its_cell(tmp_path, capsys,
                                                             compilation_cache):
    out = tmp_path / "run"
    code, stdout, err = run_main(search.main, NB201_SEARCH + compilation_cache
                                 + ["--out-dir", str(out)], capsys)
    assert code == 0, err
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["space"] == "nb201" and len(genotype["ops"]) == 3
    assert nb201.parse_genotype(genotype["genotype"]) == tuple(genotype["ops"])
    records = read_log(out)
    assert len(records) == 2 and set(records[-1]["arch"]) == {"cell"}
    # The discretization: the strongest op of every edge of the final weights.
    u = np.array(records[-1]["arch"]["cell"])
    assert genotype["ops"] == [nb201.NB201_OPS[k] for k in u.argmax(1)]
    # XNAS ran: eta* for one cell type of 3 cells, rewards clipped, experts wiped out.
    assert records[-1]["active_experts"]["cell"] < 15
    assert (out / "arch_cell.png").exists() and (out / "active_experts.png").exists()
    assert "nb201 space" in stdout


@pytest.mark.parametrize("flags, fragment", [
    (["--ops", "sep_conv_3x3,skip_connect"], "'sep_conv_3x3' is not an operation of the nb201"),
    (["--ops", "skip_connect,none"], "searches its 5 operations"),
    (["--space", "nas101"], "--space"),
])
def test_bad_space_input_is_one_line(flags, fragment, capsys, tmp_path):
    code, _, err = run_main(search.main, NB201_SEARCH + flags
                            + ["--out-dir", str(tmp_path / "run")], capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


def test_spaces_name_their_cell_types_and_experts():
    assert spaces.get_space("nb201").cell_types == ("cell",)
    assert spaces.get_space("darts").cell_types == ("normal", "reduce")
    with pytest.raises(ValueError, match="unknown search space 'x'; the spaces are darts, nb201"):
        spaces.get_space("x")
    summary = search.summary(search.parse_args(["--space", "nb201", "--nodes", "4"])[0]
                             .resolved())
    assert summary["mixture_weights"] == {"cell": [6, 5]}
    assert spaces.get_space("nb201").edges(3) == ((0, 1), (0, 2), (1, 2))
    assert len(spaces.get_space("darts").edges(4)) == 14
    # The evaluation networks: the benchmark's, with the ResNet-like cell's
    # published count (see test_nb201), and DARTS's.
    resnet = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
    network = spaces.get_space("nb201").evaluation_network(
        {"ops": nb201.parse_genotype(resnet), "nodes": 4}, 10)
    shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                 train=False))
    assert sum(np.prod(a.shape) for a in jax.tree.leaves(shapes["params"])) == 559_386
    darts = spaces.get_space("darts").evaluation_network(
        genotypes.genotype_to_dict(genotypes.PUBLISHED["DARTS_V2"]), 10)
    assert genotypes.genotype_to_dict(darts.genotype) == genotypes.genotype_to_dict(
        genotypes.PUBLISHED["DARTS_V2"])


# ------------------------------------------------------------------ the table

TINY_TABLE = groundtruth.TableConfig(
    dataset="digits", data_dir=None, cache_dir=None, train_per_class=20, test_per_class=10,
    downsample=1, channels=4, cells_per_stage=1, nodes=3, epochs=3, batch_size=16,
    crop_padding=1, seeds=(0,),
    cells=("|nor_conv_1x1~0|+|skip_connect~0|avg_pool_3x3~1|",))


def _supernet_accuracy(config, data, genotype):
    """A table entry recomputed by another program: the supernet (every expert computed)
    with the cell's one-hot weights, trained with plain optax on the same batches and the
    same crops and flips (train_step.train_step's draws: the seed's key folded with the step)."""
    model = nb201.NB201Network(data.num_classes, config.channels, config.cells_per_stage,
                               config.nodes)
    table = {ARCH: {"cell": jnp.asarray(nb201.one_hot(genotype))}}
    variables = groundtruth.supernet_init(config, data, config.seeds[0])
    params, stats = variables["params"], variables["batch_stats"]
    steps = len(data.train_labels) // config.batch_size
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(
        optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps),
        config.momentum, nesterov=True))
    opt_state = tx.init(params)
    mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)

    @jax.jit
    def step(params, stats, opt_state, key, images, labels):
        images = augment.normalize(augment.augment(key, images, config.crop_padding, True),
                                   mean, std)

        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": stats, **table}, images,
                                      train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

        (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt_state

    key = prng_key(config.seeds[0])
    for epoch in range(config.epochs):
        rows = groundtruth.order.batch_indices(groundtruth.order.epoch_permutation(
            config.seeds[0], epoch, len(data.train_labels)), config.batch_size)[:steps]
        for i, batch in enumerate(rows):
            crop_key = jax.random.split(jax.random.fold_in(key, epoch * steps + i), 3)[0]
            params, stats, opt_state = step(params, stats, opt_state, crop_key,
                                            data.train_images[batch], data.train_labels[batch])
    logits = model.apply({"params": params, "batch_stats": stats, **table},
                         augment.normalize(data.test_images, mean, std), train=False)
    return float(np.mean(np.argmax(logits, -1) == data.test_labels))


@pytest.mark.slow
def test_a_table_entry_is_recomputed_by_the_supernet(tmp_path, capsys):
    out = tmp_path / "table.json"
    table = groundtruth.run(TINY_TABLE, out, progress=False)
    assert json.loads(out.read_text()) == table
    assert [c["genotype"] for c in table["cells"]] == list(TINY_TABLE.cells)
    # A run resumes from its finished cells: nothing left to train, the same table.
    assert len((tmp_path / "table.partial.jsonl").read_text().splitlines()) == 1
    assert groundtruth.run(TINY_TABLE, out, progress=False) == table
    data = groundtruth.load_proxy(TINY_TABLE)
    assert len(data.train_labels) == 200 and np.all(np.bincount(data.train_labels) == 20)
    entry = table["cells"][0]
    assert entry["accuracy"][0] > 0.2  # trained: above chance (0.1) whatever the seed's draws
    recomputed = _supernet_accuracy(TINY_TABLE, data, entry["ops"])
    assert recomputed == pytest.approx(entry["accuracy"][0], abs=1.5 / len(data.test_labels))


def test_a_table_of_another_space_or_size_is_one_line(tmp_path, capsys):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"space": "darts", "cells": []}))
    code, _, err = run_main(search_quality.main, ["--table", str(wrong), "--out",
                                                  str(tmp_path / "q.json")], capsys)
    assert_usage_error(code, err, "is not an nb201 table")
    wrong.write_text(json.dumps({"space": "nb201", "nodes": 3, "cells": [{}] * 7}))
    code, _, err = run_main(search_quality.main, ["--table", str(wrong), "--out",
                                                  str(tmp_path / "q.json")], capsys)
    assert_usage_error(code, err, "holds 7 cells, the nb201 space of 3 nodes has 125")


def test_scores_are_rank_percentile_and_regret():
    cells = nb201.all_genotypes(3)
    table = {"cells": [{"ops": list(g), "mean_accuracy": 0.1 + k / 1000}
                       for k, g in enumerate(cells)]}
    best = search_quality.score(table, cells[-1])
    assert best == {"accuracy": pytest.approx(0.224), "percentile": 100.0, "regret": 0.0}
    worst = search_quality.score(table, cells[0])
    assert worst["percentile"] == pytest.approx(100 / 125)
    assert worst["regret"] == pytest.approx(0.124)
    with pytest.raises(nb201.SpaceError, match="not a cell of the table"):
        search_quality.score(table, ("none",) * 6)
    assert dataclasses.fields(search_quality.QualityConfig)


class _ToyNet(nn.Module):
    """One edge mixing two experts of a dense layer's output, then a classifier."""

    num_classes: int
    computed: tuple[str, ...] = ("identity", "tanh")

    @nn.compact
    def __call__(self, images, train=True):
        u = self.variable(ARCH, "cell", lambda: jnp.full((1, 2), 0.5)).value
        batch = images.shape[0]
        weights = u[0, :, 0] if u.ndim == 4 else jnp.broadcast_to(u[0], (batch, 2))
        hidden = nn.Dense(8)(images.reshape(batch, -1).astype(jnp.float32))
        experts = {"identity": hidden, "tanh": jnp.tanh(hidden)}
        mixed = sum(weights[:, k, None] * experts[op]
                    for k, op in enumerate(_ToySpace.default_ops) if op in self.computed)
        return nn.Dense(self.num_classes)(mixed)

    def feedback_replicas(self):
        return {"cell": 1}

    def with_computed(self, computed):
        return self.clone(computed=tuple(computed["cell"]))


class _ToySpace:
    """A space of one edge and two ops, written as a user would."""

    name = "toy"
    cell_types = ("cell",)
    default_ops = ("identity", "tanh")

    def validate_ops(self, ops):
        if tuple(ops) != self.default_ops:
            raise ValueError(f"the toy space searches {self.default_ops}, got {tuple(ops)}")
        return tuple(ops)

    def build(self, config, num_classes):
        return _ToyNet(num_classes)

    def edges(self, nodes):
        return ((0, 1),)

    def edge_labels(self, nodes):
        return ("0 -> 1",)

    def evaluation_network(self, genotype, num_classes, **sizes):
        return _ToyNet(num_classes, computed=tuple(genotype["ops"]))

    def check_image_size(self, image_shape, layers):
        pass

    def discretize(self, config, arch, rewards):
        return {"space": self.name, "ops": [self.default_ops[int(np.argmax(arch["cell"][0]))]]}

    def selection_rule(self, config, arch, rewards):
        return "the largest weight u"

    def text(self, genotype):
        return genotype["ops"][0]

    def write(self, config, folder, arch, rewards):
        genotype = self.discretize(config, arch, rewards)
        (folder / "genotype.json").write_text(json.dumps(genotype))
        return genotype

    def pictures(self):
        return ()

    def files(self):
        return ("genotype.json",)


def test_a_space_registered_from_user_code_searches(tmp_path, capsys, compilation_cache):
    with pytest.raises(ValueError, match="lacks"):
        spaces.register_space(object())
    with pytest.raises(ValueError, match="exists already"):
        spaces.register_space(NB201Space())
    spaces.register_space(_ToySpace())
    try:
        out = tmp_path / "run"
        code, stdout, err = run_main(search.main, [
            "--space", "toy", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size",
            "16", "--max-train-examples", "200", "--no-progress", "--out-dir", str(out),
            *compilation_cache], capsys)
        assert code == 0, err
        (record,) = read_log(out)
        assert record["step"] == 2 and "toy space" in stdout
        u = np.array(record["arch"]["cell"])
        assert u.shape == (1, 2) and not np.allclose(u, 0.5)  # two XNAS rounds moved u
        assert json.loads((out / "genotype.json").read_text())["ops"] == [
            _ToySpace.default_ops[int(np.argmax(u[0]))]]
    finally:
        spaces.SPACES.pop("toy")
