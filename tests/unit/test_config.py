"""Typed configs, key=value overrides and layout strings."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from realflow.api.config import (
    OptimizerConfig,
    ParallelismConfig,
    apply_overrides,
    parse_parallelism,
    to_yaml,
)
from realflow.api.errors import AllocationError, ConfigError


@dataclass
class _Exp:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    n_steps: int = 3
    name: str = "x"


def test_overrides_apply_typed_values():
    cfg = apply_overrides(_Exp(), ["optimizer.lr=3e-4", "n_steps=10", "name=abc"])
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.n_steps == 10 and cfg.name == "abc"
    assert isinstance(cfg, _Exp) and isinstance(cfg.optimizer, OptimizerConfig)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        apply_overrides(_Exp(), ["optimizer.lrr=1"])
    msg = str(e.value)
    assert "optimizer.lrr" in msg and "optimizer.lr," in msg and "n_steps" in msg


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="n_steps"):
        apply_overrides(_Exp(), ["n_steps=abc"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(_Exp(), ["n_steps"])


def test_post_init_validation_runs_on_overrides():
    with pytest.raises(ConfigError, match="lr_scheduler_type 'cosin'"):
        apply_overrides(_Exp(), ["optimizer.lr_scheduler_type=cosin"])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        OptimizerConfig(lr=0)


def test_yaml_has_every_field():
    text = to_yaml(_Exp())
    assert "lr: 0.001" in text and "n_steps: 3" in text


@pytest.mark.parametrize(
    "text,expected",
    [("d2t1p1", (2, 1, 1)), ("d4p2", (4, 1, 2)), ("t2", (1, 2, 1)), ("p2d3", (3, 1, 2))],
)
def test_parse_parallelism(text, expected):
    p = parse_parallelism(text)
    assert (p.dp, p.tp, p.pp) == expected
    assert p.world_size == expected[0] * expected[1] * expected[2]
    assert parse_parallelism(str(p)) == p


@pytest.mark.parametrize("text", ["", "d0", "x2", "d2d2", "2d", "d-1"])
def test_bad_layouts(text):
    with pytest.raises(AllocationError):
        parse_parallelism(text)


def test_degree_must_be_positive():
    with pytest.raises(AllocationError, match="tp"):
        ParallelismConfig(tp=0)
