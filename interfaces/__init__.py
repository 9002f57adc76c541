"""Built-in model interfaces, installed as `realflow.interfaces`.

Importing this package registers every built-in interface by name
(`realflow.api.interface.INTERFACES`): `sft`, `paired_rw`, `dpo`, `ppo_actor`,
`ppo_critic`, `grpo`, `rloo`, `remax`, and the rewards `reward_fn`,
`math_verify`, `arithmetic`, `code_verify`, `hf_classifier`. Reward functions
for `reward_fn` register with `register_reward_function`. The math lives in
`realflow.interfaces.functional`; docs/interfaces.md has the key contract.
"""
from realflow.interfaces import (  # noqa: F401  (each module registers its interfaces)
    code_reward,
    dpo,
    grpo,
    hf_classifier,
    math_reward,
    paired_rw,
    ppo_actor,
    ppo_critic,
    remax,
    reward_fn,
    sft,
)
from realflow.interfaces.reward_fn import (
    REWARD_FUNCTIONS,
    Completion,
    TextReward,
    register_reward_function,
    resolve_reward_function,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "Completion",
    "TextReward",
    "register_reward_function",
    "resolve_reward_function",
]
