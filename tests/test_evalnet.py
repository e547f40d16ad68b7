"""Tests of the evaluation networks (xnas_jax.spaces.darts.evalnet).

Parameter counts and multiply-adds are checked against an independent count
written here from the DARTS layer shapes (no Flax involved), and against the
figures DARTS published.  Big networks are only traced (``jax.eval_shape``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnas_jax.spaces.darts import evalnet, genotypes

# "rbg" keys: threefry's initializers are slow to compile on CPU.
RNGS = {
    "params": jax.random.key(0, impl="rbg"),
    evalnet.DROP_PATH_RNG: jax.random.key(1, impl="rbg"),
}


# --------------------------------------------------------------------------
# An independent count, layer by layer, from the DARTS model definition.


def _op_counts(name: str, c: int, out_side: int) -> tuple[int, int]:
    """(params, multiply-adds) of one edge's operation with c channels."""
    if name.startswith(("sep_conv", "dil_conv")):
        k = int(name[-1])
        block_params = c * k * k + c * c + 2 * c  # depthwise, pointwise, BN
        block_flops = out_side**2 * (c * k * k + c * c)
        blocks = 2 if name.startswith("sep_conv") else 1
        return blocks * block_params, blocks * block_flops
    if name == "skip_connect_reduce":  # FactorizedReduce(c, c)
        return c * c + 2 * c, out_side**2 * c * c
    return 0, 0  # pools, identity, none


def reference_counts(
    genotype, channels, layers, num_classes, image_shape, imagenet=False
) -> tuple[int, int, int]:
    """(params without aux, aux params, multiply-adds) of the DARTS network."""
    height, _, in_channels = image_shape
    params = flops = 0
    if imagenet:
        half = channels // 2
        stems = [(in_channels, half, height // 2), (half, channels, height // 4),
                 (channels, channels, height // 8)]  # fmt: skip
        for cin, cout, side in stems:
            params += 9 * cin * cout + 2 * cout
            flops += side**2 * 9 * cin * cout
        c_pp = c_p = channels
        side_p = height // 8  # s1's side; s0 (stem0) is twice as large
    else:
        params += 9 * in_channels * 3 * channels + 2 * 3 * channels
        flops += height**2 * 9 * in_channels * 3 * channels
        c_pp = c_p = 3 * channels
        side_p = height
    c = channels
    for layer in range(layers):
        reduction = layer in (layers // 3, 2 * layers // 3)
        c *= 2 if reduction else 1
        # Both preprocessings (1x1 ReLUConvBN, or, after a reduction, the
        # FactorizedReduce of the twice larger s0: two strided 1x1 convs to
        # c/2) have c_in * c weights + BN and output side_p x side_p maps.
        for cin in (c_pp, c_p):
            params += cin * c + 2 * c
            flops += side_p**2 * cin * c
        side_out = side_p // 2 if reduction else side_p
        pairs = genotype.reduce if reduction else genotype.normal
        for name, source in pairs:
            strided = reduction and source < 2
            if name == "skip_connect" and strided:
                name = "skip_connect_reduce"
            p, f = _op_counts(name, c, side_out)
            params += p
            flops += f
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        c_pp, c_p = c_p, len(concat) * c
        side_p = side_out
        if layer == 2 * layers // 3:
            c_aux = c_p
    params += c_p * num_classes + num_classes
    flops += c_p * num_classes
    aux = c_aux * 128 + 2 * 128 + 128 * 768 * 4 + 768 * num_classes + num_classes
    if not imagenet:
        aux += 2 * 768  # DARTS's ImageNet tower has no BN after the 2x2 conv
    return params, aux, flops


# --------------------------------------------------------------------------
# Parameter counts and multiply-adds.


@pytest.fixture(scope="module")
def darts_v2_cifar():
    model = evalnet.build_network(genotypes.DARTS_V2, 10)
    return evalnet.network_summary(model, (32, 32, 3))


def test_darts_v2_cifar_matches_published_count(darts_v2_cifar):
    params, aux, flops = reference_counts(genotypes.DARTS_V2, 36, 20, 10, (32, 32, 3))
    # DARTS's own log: "param size = 3.349342MB" (auxiliary head excluded).
    assert params == 3_349_342
    assert darts_v2_cifar == {
        "params": params,
        "params_with_aux": params + aux,
        "flops_per_image": flops,
    }
    assert darts_v2_cifar["params_with_aux"] == 3_825_768


@pytest.mark.parametrize("name", sorted(genotypes.PUBLISHED))
def test_published_genotypes_match_reference(name):
    genotype = genotypes.PUBLISHED[name]
    model = evalnet.build_network(genotype, 7, channels=8, layers=5)
    params, aux, flops = reference_counts(genotype, 8, 5, 7, (32, 32, 3))
    assert evalnet.network_summary(model, (32, 32, 3)) == {
        "params": params,
        "params_with_aux": params + aux,
        "flops_per_image": flops,
    }


def test_xnas_sizes_match_paper():
    # XNAS Table 1: 3.7M / 5.6M / 7.2M parameters at 36 / 44 / 50 channels.
    for size, paper in (("xnas-small", 3.7), ("xnas-medium", 5.6), ("xnas-large", 7.2)):
        spec = evalnet.SIZES[size]
        params, _, _ = reference_counts(genotypes.XNAS, spec.channels, spec.layers, 10, (32, 32, 3))
        assert abs(params / 1e6 - paper) < 0.1, (size, params)


def test_imagenet_darts_v2_shapes_and_counts():
    model = evalnet.build_network(genotypes.DARTS_V2, 1000, variant="imagenet")
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    (logits, aux_logits), variables = jax.eval_shape(
        lambda x: model.init_with_output(RNGS, x, train=True, drop_prob=0.1), images
    )
    assert logits.shape == (2, 1000) and aux_logits.shape == (2, 1000)
    params, aux, _ = reference_counts(
        genotypes.DARTS_V2, 48, 14, 1000, (224, 224, 3), imagenet=True
    )
    assert params == 4_718_752  # DARTS's ImageNet model: 4.7M
    assert evalnet.count_params(variables["params"]) == params
    assert evalnet.count_params(variables["params"], include_auxiliary=True) == params + aux


def test_imagenet_flops_match_reference():
    model = evalnet.build_network(genotypes.XNAS, 100, variant="imagenet", channels=16, layers=5)
    _, _, flops = reference_counts(genotypes.XNAS, 16, 5, 100, (64, 64, 3), imagenet=True)
    assert evalnet.network_summary(model, (64, 64, 3))["flops_per_image"] == flops


# --------------------------------------------------------------------------
# Shapes, dtypes, modes.


def test_cifar_full_size_shapes():
    images = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
    model = evalnet.build_network(genotypes.XNAS, 10)
    (logits, aux_logits), _ = jax.eval_shape(
        lambda x: model.init_with_output(RNGS, x, train=True, drop_prob=0.2), images
    )
    assert logits.shape == (3, 10) and aux_logits.shape == (3, 10)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "image_shape", [(8, 8, 1), (28, 28, 1), (16, 24, 3)], ids=["digits", "mnist", "non-square"]
)
def test_small_inputs_and_grayscale(image_shape):
    model = evalnet.build_network(genotypes.DARTS_V2, 10, channels=4, layers=3)
    images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    (logits, aux_logits), variables = jax.eval_shape(
        lambda x: model.init_with_output(RNGS, x, train=True, drop_prob=0.1), images
    )
    assert logits.shape == (2, 10) and aux_logits.shape == (2, 10)
    # The stem reads whatever channels the images have.
    assert variables["params"]["stem"]["Conv_0"]["kernel"].shape == (3, 3, image_shape[2], 12)
    logits, aux_logits = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, images
    )
    assert logits.shape == (2, 10) and aux_logits is None


def test_odd_sides_are_refused_clearly():
    model = evalnet.build_network(genotypes.DARTS_V2, 10, channels=4, layers=5)
    with pytest.raises(ValueError, match=r"cell_4 \(after a reduction\) is 15x15.*even sides"):
        evalnet.network_summary(model, (30, 30, 3))


def test_bfloat16_computes_in_bf16_but_keeps_float32_state():
    model = evalnet.build_network(
        genotypes.XNAS, 10, channels=4, layers=3, dtype=jnp.bfloat16
    )
    images = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    (logits, aux_logits), variables = jax.eval_shape(
        lambda x: model.init_with_output(RNGS, x, train=True, drop_prob=0.1), images
    )
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32 and aux_logits.dtype == jnp.float32


def test_build_network_rejects_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        evalnet.build_network(genotypes.XNAS, 10, variant="mobile")
    with pytest.raises(ValueError, match="even"):
        evalnet.build_network(genotypes.XNAS, 10, variant="imagenet", channels=45)
    with pytest.raises(genotypes.GenotypeError):
        bad = genotypes.XNAS._replace(normal=[("conv_7x7", 0)] + list(genotypes.XNAS.normal[1:]))
        evalnet.build_network(bad, 10)


# --------------------------------------------------------------------------
# Drop-path.


def test_drop_path_zeroes_whole_samples_at_the_rate():
    x = jnp.ones((20000, 2, 2, 3))
    y = np.asarray(jax.jit(evalnet.drop_path)(x, 0.3, jax.random.key(3, impl="rbg")))
    per_sample = y.reshape(len(y), -1)
    dropped = np.all(per_sample == 0, axis=1)
    kept = np.all(np.isclose(per_sample, 1 / 0.7), axis=1)
    assert np.all(dropped | kept)  # whole samples, never parts of one
    assert abs(dropped.mean() - 0.3) < 0.015  # 4.6 standard deviations
    assert abs(per_sample.mean() - 1.0) < 0.03  # the expectation is kept


def test_drop_path_with_zero_rate_is_identity():
    x = jax.random.normal(jax.random.key(4, impl="rbg"), (8, 3, 3, 2))
    np.testing.assert_array_equal(evalnet.drop_path(x, 0.0, jax.random.key(5, impl="rbg")), x)


@pytest.fixture(scope="module")
def reduction_cell():
    cell = evalnet.Cell(
        pairs=tuple(genotypes.DARTS_V1.reduce),
        concat=tuple(genotypes.DARTS_V1.reduce_concat),
        features=4,
        reduction=True,
        reduction_prev=False,
    )
    s = jax.random.normal(jax.random.key(6, impl="rbg"), (64, 8, 8, 4))
    variables = jax.jit(lambda x: cell.init(RNGS, x, x, train=True))(s)
    return cell, variables, s


def test_cell_drop_path_only_when_training(reduction_cell):
    cell, variables, s = reduction_cell

    def run(train, drop_prob, rngs=None, with_stats=False):
        apply = lambda v, x: cell.apply(  # noqa: E731
            v, x, x, train, drop_prob, rngs=rngs, mutable=["batch_stats"]
        )
        out, updates = jax.jit(apply)(variables, s)
        return (np.asarray(out), updates) if with_stats else np.asarray(out)

    plain, updates = run(True, None, with_stats=True)
    assert plain.shape == (64, 4, 4, 16) and np.all(np.isfinite(plain))
    # Training normalizes with the batch and moves the running statistics.
    assert not np.allclose(plain, run(False, None))
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])  # fmt: skip
    assert all(jax.tree.leaves(moved))
    # Evaluation ignores the rate (and needs no rng); a zero rate changes nothing.
    np.testing.assert_array_equal(run(False, 0.9), run(False, None))
    np.testing.assert_allclose(
        run(True, 0.0, {evalnet.DROP_PATH_RNG: jax.random.key(7, impl="rbg")}), plain, atol=1e-6
    )
    dropped = run(True, 0.5, {evalnet.DROP_PATH_RNG: jax.random.key(7, impl="rbg")})
    assert not np.allclose(dropped, plain)
    with pytest.raises(Exception, match=evalnet.DROP_PATH_RNG):
        run(True, 0.5)  # drop-path needs an explicit rng


def test_identity_edges_are_never_dropped():
    x = jax.random.normal(jax.random.key(8, impl="rbg"), (32, 4, 4, 3))
    rngs = {evalnet.DROP_PATH_RNG: jax.random.key(9, impl="rbg")}
    identity = evalnet.Edge("skip_connect", 3, 1)
    out = identity.apply({}, x, True, 0.99, rngs=rngs)
    np.testing.assert_array_equal(out, x)
    pool = evalnet.Edge("max_pool_3x3", 3, 1)
    out = np.asarray(pool.apply({}, x, True, 0.99, rngs=rngs)).reshape(32, -1)
    assert np.mean(np.all(out == 0, axis=1)) > 0.8
