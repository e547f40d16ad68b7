"""The README's python blocks run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README shows the optimizer in python"
    namespace: dict = {}
    for number, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {number + 1}", "exec"), namespace)
    # The example trained to the horizon: one expert left per edge, read from the state.
    import numpy as np
    import xnas_jax

    active = np.asarray(xnas_jax.active_experts(namespace["arch_state"])["u"])
    assert (active.sum(-1) == 1).all()
    u = np.asarray(namespace["u"]["u"])
    np.testing.assert_array_equal(u > 0, active)
    assert np.isfinite(float(namespace["val_loss"]))
