"""Building the models of an experiment: random from an architecture, or from HF.

`config_from_arch` turns a `realflow.api.experiment.ModelArch` into a
`ReaLModelConfig` by way of the family's own Hugging Face config, so a random
"qwen2" has exactly the numerics (norms, biases, activation) of a real Qwen2
checkpoint and saves as one.
"""
from __future__ import annotations

import dataclasses
from typing import Collection

import torch
import transformers

from realflow.api.errors import ConfigError, ModelError
from realflow.api.experiment import ModelArch, ModelSpec
from realflow.model.config import ReaLModelConfig
from realflow.model.families import get_hf_family
from realflow.model.hf_io import load_hf_checkpoint
from realflow.model.real_model import ReaLModel


def config_from_arch(
    arch: ModelArch,
    *,
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    is_critic: bool = False,
) -> ReaLModelConfig:
    """The ReaLModelConfig of a model of `arch.family` with these dimensions."""
    family = get_hf_family(arch.family)
    vocab = arch.vocab_size or vocab_size
    if not vocab:
        raise ModelError(f"model arch '{arch.family}': vocab_size is 0 and no tokenizer vocabulary was given")
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=arch.hidden_dim,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_q_heads,
        num_key_value_heads=arch.n_kv_heads,
        intermediate_size=arch.intermediate_dim,
        max_position_embeddings=arch.n_positions,
        tie_word_embeddings=arch.tied_embedding,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    if family.model_type == "gpt2":
        if arch.n_kv_heads != arch.n_q_heads:
            raise ModelError(f"gpt2 has no grouped-query attention: n_kv_heads={arch.n_kv_heads} != n_q_heads={arch.n_q_heads}")
        kwargs["n_inner"] = arch.intermediate_dim
    hf = transformers.AutoConfig.for_model(family.model_type, **kwargs)
    config = family.config_from_hf(hf)
    return ReaLModelConfig(
        **{**config.__dict__, "is_critic": is_critic, "tied_embedding": config.tied_embedding and not is_critic, "hf_family": family.name}
    )


def random_model(config: ReaLModelConfig, seed: int, init_std: float = 0.02) -> ReaLModel:
    """A ReaLModel drawn from N(0, init_std) with its own generator (reproducible by seed)."""
    model = ReaLModel(config, init_std=None)
    model.init_weights(init_std, generator=torch.Generator().manual_seed(seed))
    return model


def copy_initial_weights(dst: ReaLModel, src: ReaLModel) -> list[str]:
    """Copy every parameter `dst` shares (same key, same shape) with `src`.

    Used for `ModelSpec.init_from`: a reference model gets all of the actor's
    weights; a critic gets the trunk and keeps its own value head. Returns the keys
    that were *not* copied.
    """
    kept = []
    with torch.no_grad():
        for key in dst.layout.keys:
            if key in src.layout.keys and src.layout.shape(key) == dst.layout.shape(key):
                dst.layout.view(dst.flat_params, key).copy_(src.layout.view(src.flat_params, key))
            else:
                kept.append(key)
    return kept


def build_role_models(
    specs: dict[str, ModelSpec],
    *,
    vocab_size: int,
    bos_token_id: int | None,
    eos_token_id: int | None,
    seed: int,
    roles: Collection[str] | None = None,
) -> dict[str, ReaLModel]:
    """One ReaLModel per role, from a local HF directory or random from `arch`
    (roles marked `model_free` get none).

    `roles` (default: all) limits what is returned; the roles they initialise from
    (`init_from`, transitively) are built too and then dropped. A role's weights
    do not depend on which other roles are built.

    Roles with `init_from` are built after their source, with its architecture,
    and start from its weights (a critic keeps a fresh value head); their own
    `path` and `arch` must be left unset.
    Random roles draw from a generator seeded by (seed, role index) so that adding a
    role does not change the others.
    """
    models: dict[str, ReaLModel] = {}
    wanted = set(specs) if roles is None else set(roles)
    needed: set[str] = set()
    stack = [r for r in wanted if r in specs]
    while stack:
        role = stack.pop()
        if role not in needed:
            needed.add(role)
            if specs[role].init_from is not None and specs[role].init_from in specs:
                stack.append(specs[role].init_from)  # type: ignore[arg-type]
    pending = {role: spec for role, spec in specs.items() if not spec.model_free and role in needed}
    while pending:
        progressed = False
        for role, spec in list(pending.items()):
            if spec.init_from is not None and spec.init_from not in models:
                continue
            if spec.init_from is not None:
                # Same architecture as the source, the head as this role needs it.
                src = models[spec.init_from]
                config = dataclasses.replace(
                    src.config, is_critic=spec.is_critic, tied_embedding=src.config.tied_embedding and not spec.is_critic
                )
                model = random_model(config, seed=seed * 1000 + sorted(specs).index(role))
                copy_initial_weights(model, src)
            elif spec.path is not None:
                model = load_hf_checkpoint(spec.path, is_critic=spec.is_critic)
            else:
                config = config_from_arch(
                    spec.arch,
                    vocab_size=vocab_size,
                    bos_token_id=bos_token_id,
                    eos_token_id=eos_token_id,
                    is_critic=spec.is_critic,
                )
                model = random_model(config, seed=seed * 1000 + sorted(specs).index(role))
            model.gradient_checkpointing = spec.gradient_checkpointing
            models[role] = model
            del pending[role]
            progressed = True
        if not progressed:
            unknown = {r: s.init_from for r, s in pending.items() if s.init_from not in specs}
            if unknown:
                raise ConfigError(f"model roles initialise from roles that do not exist (init_from): {unknown}; "
                                  f"roles: {sorted(specs)}")
            raise ConfigError(f"model roles {sorted(pending)} initialise from each other in a cycle (init_from)")
    return {role: model for role, model in models.items() if role in wanted}
