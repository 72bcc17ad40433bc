"""SGDW (optimizer "sgdw"): SGD with momentum and decoupled weight decay, against optax's own formulation, and
the sgdw-vs-l2 preset that sets it against SGD with Keras' coupled L2 penalty.

optax has no sgdw; its documented way is optax.sgd chained with add_decayed_weights scaled by the learning
rate (here -lr * weight_decay, after sgd's sign flip). jaxreg's chain puts the decay before the learning rate
(`optim.make_optimizer`): two different programs, so float32 round-off (tests/test_optimizers.py's RTOL/ATOL).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest
from test_optimizers import ATOL, BASE, RTOL, _jaxreg_params, _optax_params, data  # noqa: F401 (data: a fixture)

from jaxreg import penalties
from jaxreg.specs import describe_training
from jaxreg.train import Hyperparameters
from jaxreg.variants import VariantError, VariantSpec, plan

pytestmark = pytest.mark.numerics

LR, MOMENTUM, WD = 0.3, 0.9, 0.05


def _moved(ours, start) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(start)))


def test_sgdw_matches_optax_sgd_chained_with_decay_scaled_by_the_learning_rate(data):  # noqa: F811
    config = dataclasses.replace(BASE, optimizer="sgdw", use_weight_decay=True)
    hp = Hyperparameters.create(learning_rate=LR, momentum=MOMENTUM, weight_decay=WD)
    start, ours = _jaxreg_params(config, hp, data[1])
    mask = penalties.kernel_mask(start, config.penalize)
    reference = optax.chain(optax.sgd(LR, momentum=MOMENTUM), optax.add_decayed_weights(-LR * WD, mask))
    theirs = _optax_params(config, hp, reference, data[1], start)
    assert _moved(ours, start) > 1e-3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg="sgdw"), ours, theirs)
    # decoupled is not coupled: the same strength as Keras' penalty (gradient 2 c w = WD w) trains otherwise
    coupled = dataclasses.replace(BASE, optimizer="sgd", use_penalty=True)
    l2 = _jaxreg_params(coupled, Hyperparameters.create(learning_rate=LR, momentum=MOMENTUM, l2=WD / 2), data[1])[1]
    kernel = ours["params"]["hidden_1"]["kernel"]
    assert float(np.abs(kernel - l2["params"]["hidden_1"]["kernel"]).max()) > 1e-4


def test_sgdw_is_sgd_with_the_decay_stage_and_named_so():
    with pytest.raises(VariantError, match="nesterov"):
        VariantSpec("v", optimizer="sgdw", nesterov=True)
    with pytest.raises(VariantError, match="b1"):
        VariantSpec("v", optimizer="sgdw", b1=0.5)
    spec = VariantSpec("v", optimizer="sgdw", learning_rate=0.1, momentum=0.9, weight_decay=1e-3)
    assert describe_training(spec) == ("sgdw lr=0.1 momentum=0.9 wd=1e-3", "constant")
    assert describe_training(dataclasses.replace(spec, weight_decay=0.0))[0] == "sgdw lr=0.1 momentum=0.9 wd=0"


def test_sgdw_vs_l2_preset_plans_two_programs():
    """5 learning rates x 5 strengths per side, plus plain SGD per rate, momentum 0.9, 3 seeds: 2 programs."""
    from experiments import presets

    config = presets.load("sgdw-vs-l2")
    buckets = plan(config.variant_specs())
    assert config.seeds == 3 and sum(len(b.configs) * len(b.seeds) for b in buckets) == 3 * (5 + 25 + 25)
    assert sorted((b.optimizer, len(b.configs)) for b in buckets) == [("sgd", 30), ("sgdw", 25)]
    assert {v.momentum for v in config.variants} == {0.9}
    sgdw = [v for v in config.variants if v.optimizer == "sgdw"]
    lams = {round(v.learning_rate * v.weight_decay, 12) for v in sgdw}  # the paper's per-step decay
    assert len(lams) == 5 and len({v.learning_rate for v in sgdw}) == 5
    assert all(v.l2 > 0 for v in config.variants if v.optimizer == "sgd" and "_l2_" in v.name)
