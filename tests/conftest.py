"""Shared test helpers: a persistent compilation cache, CLI error checks, and the tiny
search and training runs that several test files read (run once per session)."""

from __future__ import annotations

import os

# The tests compile some 200 small programs and run each for a few steps, so
# compiling is most of their time.  XLA's CPU backend compiles them about 40%
# faster without LLVM's optimizations and with its classic (not MLIR) fusion
# code: the same HLO, computed by slower code.  Benchmarks and runs keep XLA's
# defaults.  Set before JAX creates its CPU client; subprocesses inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

os.environ.setdefault("MPLBACKEND", "Agg")

# Test inputs and initializers draw with "rbg" keys, as the runs do
# (xnas_jax.prng): on CPU, threefry's samplers take seconds to compile for
# every new shape, and most tests draw a few shapes of their own.
jax.config.update("jax_default_prng_impl", "rbg")


def _session_folder(tmp_path_factory, name: str):
    """A folder of this test session, one for all its xdist workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp(name)
    folder = tmp_path_factory.getbasetemp().parent / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def user_cache_folder(tmp_path_factory):
    """The commands keep a compilation cache in the user's cache folder unless told
    otherwise: in the tests (and their subprocesses) that folder is a temporary one,
    never the real ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(_session_folder(tmp_path_factory, "xdg_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """The CLIs' --compilation-cache: runs of the same network reuse the first
    run's executables, in every xdist worker; JAX's global setting is restored
    afterwards."""
    previous = jax.config.jax_compilation_cache_dir
    # One folder for all the workers of this session: a program that two test
    # files compile (the tiny search's step, say) compiles once.
    folder = _session_folder(tmp_path_factory, "jax_cache")
    yield ["--compilation-cache", str(folder)]
    jax.config.update("jax_compilation_cache_dir", previous)
    jax_compilation_cache.reset_cache()


# A search and a training run small enough for the CPU: every part of each runs.
FEW_OPS = "max_pool_3x3,skip_connect,sep_conv_3x3,dil_conv_3x3"
TINY_SEARCH = [
    "--channels", "4", "--layers", "3", "--ops", FEW_OPS, "--epochs", "2",
    "--batch-size", "16", "--max-steps-per-epoch", "3", "--max-train-examples", "200",
    "--no-progress",
]  # fmt: skip
TINY_TRAIN = [
    "--genotype", "DARTS_V2", "--dataset", "digits", "--channels", "4", "--layers", "3",
    "--epochs", "3", "--batch-size", "32", "--max-steps-per-epoch", "8",
    "--learning-rate", "0.05", "--eval-batch-size", "128", "--no-progress",
]  # fmt: skip


ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process that runs this checkout's package (whichever one
    is installed), with ``overrides``; it inherits XLA_FLAGS (TEST_XLA_FLAGS) unless told."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


def _run(main, argv) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, None), f"exit status {code}"


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, compilation_cache):
    """The folder of a finished TINY_SEARCH run (read-only: copy it to change it)."""
    from xnas_jax import search

    out = tmp_path_factory.mktemp("tiny_search") / "run"
    _run(search.main, TINY_SEARCH + compilation_cache + ["--out-dir", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory, compilation_cache):
    """The folder of a finished TINY_TRAIN run (read-only: copy it to change it)."""
    from xnas_jax import train

    out = tmp_path_factory.mktemp("tiny_train") / "run"
    _run(train.main, TINY_TRAIN + compilation_cache + ["--out-dir", str(out)])
    return out


# A small supernet's per-feedback gradients (test_search_result.py, test_search_step.py).
FEEDBACK_OPS = ("avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
FEEDBACK_LAYERS = 4  # cells 0 and 3 normal, 1 and 2 reduction: r_c = 2 for both types
FEEDBACK_BATCH = 4


@pytest.fixture(scope="session")
def feedback_setup():
    """``(model, loss, arch, copies, grads)``: a 4-cell supernet, the loss of a batch as a
    function of per-feedback copies of u, unequal u with one expert wiped out on one
    edge of the normal cell, its copies, and every feedback's gradient of the mean loss."""
    import jax.numpy as jnp

    from xnas_jax import search_step
    from xnas_jax.feedback import per_feedback
    from xnas_jax.spaces import ARCH
    from xnas_jax.spaces.darts import genotypes
    from xnas_jax.spaces.darts.supernet import SearchNetwork

    model = SearchNetwork(num_classes=3, channels=2, layers=FEEDBACK_LAYERS, ops=FEEDBACK_OPS,
                          steps=2)
    images = jax.random.normal(jax.random.key(0), (FEEDBACK_BATCH, 8, 8, 3))
    labels = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(1), images, train=True)
    arch = {k: jax.nn.softmax(jax.random.normal(jax.random.key(2 + i), v.shape))
            for i, (k, v) in enumerate(variables[ARCH].items())}
    arch["normal"] = arch["normal"].at[0, 2].set(0.0)
    arch["normal"] = arch["normal"] / arch["normal"].sum(-1, keepdims=True)

    def loss(copies):
        logits, _ = model.apply(
            {"params": variables["params"], "batch_stats": variables["batch_stats"],
             ARCH: copies}, images, train=True, mutable=["batch_stats"])
        return search_step.cross_entropy(logits, labels)

    copies = per_feedback(arch, FEEDBACK_BATCH, genotypes.cell_replicas(FEEDBACK_LAYERS))
    grads = jax.jit(jax.grad(loss))(copies)
    return model, loss, arch, copies, grads


def _plain_mixture(outputs, weights, rows):
    """sum_i u_i f_i by plain autodiff, for (N,) or (B, N) weights."""
    out = 0.0
    for groups, group_rows in zip(outputs, rows):
        for g, r in enumerate(group_rows):
            if r >= 0:
                y = groups if groups.ndim == 4 else groups[g]
                w = weights[..., r].astype(y.dtype)
                out = out + y * (w if weights.ndim == 1 else w[:, None, None, None])
    return out


@pytest.fixture(scope="session")
def feedback_reference(feedback_setup):
    """The per-feedback gradients of ``feedback_setup`` by plain autodiff (no custom VJP),
    float64."""
    import numpy as np

    from xnas_jax.spaces.darts import supernet

    _, loss, _, copies, _ = feedback_setup
    original = supernet.mixture
    supernet.mixture = _plain_mixture
    try:
        grads = jax.jit(jax.grad(loss))(copies)
    finally:
        supernet.mixture = original
    return {k: np.asarray(v, np.float64) for k, v in grads.items()}


def flip_bytes(checkpoint: Path, count: int = 64) -> Path:
    """Flips ``count`` bytes in the middle of the checkpoint's largest array file."""
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def assert_usage_error(code: int, err: str, *fragments: str) -> None:
    """A CLI usage error: exit status 2 and one line ``error: ...`` naming the problem."""
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_script_command_line(module, capsys) -> None:
    """An experiment's or benchmark's command line: ``python -m <module>`` in its usage,
    described by its docstring's first line; a bad flag is a usage error."""
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: python -m {module.__name__} ")
    # argparse wraps lines (also at hyphens): compare without whitespace.
    assert "".join(module.__doc__.splitlines()[0].split()) in "".join(usage.split())
    with pytest.raises(SystemExit) as exit_:
        module.main(["--no-such-flag"])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, "--no-such-flag")


_RUN_FIXTURES = {"tiny_search", "tiny_train", "darts_search", "search_run", "train_run"}


# Files in the order xdist hands them to the workers: the longest first (their
# time in the suite, measured), so that no long file is left for the end; the
# rest follow in collection order.  pyproject.toml turns off xdist's own order (by
# the number of tests in a file, which put the 8-device process, half the
# suite's time, among the last).
_LONGEST_FIRST = ("test_parallel.py", "test_user_commands.py", "test_default_flags.py",
                  "test_faults.py", "test_search.py", "test_runs.py", "test_supernet.py",
                  "test_train.py", "test_benchmarks.py", "test_search_result.py",
                  "test_quality_study.py",
                  "test_autoaugment.py", "test_spaces.py", "test_nb201.py", "test_ops.py")
_FIRST_TEST = "test_checks_on_eight_devices_in_their_own_process"


def pytest_collection_modifyitems(items):
    """Tests that read a whole search or training run are `slow` (marked by fixture);
    the longest files go first."""
    for item in items:
        if _RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    # Stable: the rest keep their order.  The 8-device process is the first
    # item of its file, so that it starts at once.
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)),
                                 item.name != _FIRST_TEST))
