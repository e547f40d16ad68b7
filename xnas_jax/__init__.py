"""xnas_jax: XNAS (Nayman et al., NeurIPS 2019) in JAX, Flax and optax."""

from xnas_jax.feedback import feedback_value_and_grad, per_feedback
from xnas_jax.optimizers import (
    SoftmaxGDState,
    XNASState,
    active_experts,
    darts,
    expert_probabilities,
    find_states,
    normalized_entropy,
    round_rewards,
    softmax_gd,
    theoretical_learning_rate,
    xnas,
)

__version__ = "0.1.0"

__all__ = [
    "SoftmaxGDState",
    "XNASState",
    "active_experts",
    "darts",
    "expert_probabilities",
    "feedback_value_and_grad",
    "find_states",
    "normalized_entropy",
    "per_feedback",
    "round_rewards",
    "softmax_gd",
    "theoretical_learning_rate",
    "xnas",
]
