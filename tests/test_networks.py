"""Own models in the variant engine: Flax modules of each calling style, function pairs, the penalty rule."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import penalties
from jaxreg.batches import SparseBatch
from jaxreg.data import synthetic_dataset
from jaxreg.dropout import dropout
from jaxreg.model import MLP, MultiHotDense, multi_hot_matmul
from jaxreg.networks import Network, default_penalized
from jaxreg.train import Hyperparameters, StepConfig, check_stages, init_state, penalty, train_step
from jaxreg.variants import RunSettings, VariantError, VariantSpec, plan, run, with_seeds

SETTINGS = RunSettings(epochs=2, batch_size=128, eval_batch_size=256)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n_train=600, n_validation=200, num_words=500, seed=1)


class BagMean(nn.Module):
    """jaxreg style: the mean of the active words' embeddings, a traced dropout rate, one logit."""

    features: int = 8

    @nn.compact
    def __call__(self, x, dropout_rate, dropout_key):
        summed = MultiHotDense(self.features, name="bag")(x)
        num_words = x.num_words if isinstance(x, SparseBatch) else x.shape[-1]
        counts = multi_hot_matmul(x, jnp.ones((num_words, 1), summed.dtype))
        h = dropout(summed / jnp.maximum(counts, 1.0), dropout_rate, dropout_key)
        return nn.Dense(1, name="output")(h)


class FlaxDropout(nn.Module):
    """Flax style: nn.Dropout at its own rate, switched by `train`."""

    rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(MultiHotDense(16)(x))
        h = nn.Dropout(self.rate, deterministic=not train)(h)
        return nn.Dense(1)(h)


class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(MultiHotDense(8)(x)))


def test_the_study_mlp_as_an_own_model_trains_as_the_built_in_one(dataset):
    """MLP((16, 16)) passed as a model runs the generic path (optax chain, no padding) and matches
    the built-in path (which may fuse the first layer's update) to float32 round-off."""
    common = dict(l2=1e-3, dropout_rate=0.3)
    built_in = VariantSpec("mlp", (16, 16), **common)
    own = VariantSpec("own", model=MLP((16, 16)), **common)
    result = run(with_seeds([built_in, own], [0, 2]), dataset, SETTINGS)
    assert [b["model"] for b in result.buckets] == ["MLP(16, 16)", "MLP(widths=(16, 16), product='sparse', outputs=1)"]
    for seed in (0, 2):
        a, b = result.history[("mlp", seed)], result.history[("own", seed)]
        for metric in a:
            np.testing.assert_allclose(b[metric], a[metric], rtol=1e-5, atol=1e-7, err_msg=metric)
    final = result.params[("own", 0)].final
    assert set(final["params"]) == {"hidden_0", "hidden_1", "output"}


def test_each_calling_style_trains_and_dropout_reaches_jaxreg_style_models(dataset):
    specs = [
        VariantSpec("bag", model=BagMean()),
        VariantSpec("bag_dropout", model=BagMean(), dropout_rate=0.5),
        VariantSpec("flax", model=FlaxDropout(0.5)),
        VariantSpec("flax_no_dropout", model=FlaxDropout(0.0)),
        VariantSpec("plain", model=Plain(), l2=1e-3),
    ]
    result = run(specs, dataset, dataclasses.replace(SETTINGS, epochs=3))
    h = result.history
    for name in ("bag", "flax", "plain"):
        assert h[(name, 0)]["loss"][-1] < h[(name, 0)]["loss"][0], name
        assert np.all(np.isfinite(h[(name, 0)]["val_accuracy"]))
    assert not np.allclose(h[("bag", 0)]["loss"], h[("bag_dropout", 0)]["loss"])
    assert not np.allclose(h[("flax", 0)]["loss"], h[("flax_no_dropout", 0)]["loss"])
    assert np.all(h[("plain", 0)]["penalty"] > 0) and np.all(h[("bag", 0)]["penalty"] == 0)
    assert len(plan(specs)) == 4, "equal modules (BagMean()) share a program"


def test_dropout_rate_that_would_not_reach_the_model_is_refused():
    with pytest.raises(VariantError, match="dropout_rate=0.5 does not reach model FlaxDropout"):
        VariantSpec("x", model=FlaxDropout(), dropout_rate=0.5)
    with pytest.raises(VariantError, match="dropout_rate"):
        VariantSpec("x", model=Plain(), dropout_rate=0.1)
    with pytest.raises(VariantError, match="widths=.*study's MLP"):
        VariantSpec("x", widths=(4, 4), model=Plain())
    with pytest.raises(VariantError, match="model=.*not a usable model"):
        VariantSpec("x", model="not a module")


def test_function_pair_models_train(dataset):
    """A model given as init and apply functions (no Flax module)."""

    def init_fn(key, x):
        return {"params": {"w": {"kernel": jax.random.normal(key, (x.shape[-1], 1)) * 0.01}}}

    def apply_fn(params, x, dropout_rate, dropout_key):
        return MultiHotDense(1).apply({"params": {"kernel": params["params"]["w"]["kernel"], "bias": jnp.zeros(1)}}, x)

    spec = VariantSpec("linear", model=Network(init_fn=init_fn, apply_fn=apply_fn), l1=1e-4)
    h = run([spec], dataset, SETTINGS).history[("linear", 0)]
    assert h["val_loss"][-1] < h["val_loss"][0] and np.all(h["penalty"] > 0)


def test_the_penalty_rule_selects_leaves_by_path():
    params = Plain().init(jax.random.key(0), jnp.zeros((1, 20)))
    assert penalties.kernel_mask(params)["params"]["Dense_0"]["kernel"]
    assert not penalties.kernel_mask(params)["params"]["Dense_0"]["bias"]
    mlp = MLP((4, 4)).init(jax.random.key(0), jnp.zeros((1, 20)))
    assert penalties.kernel_mask(mlp) == penalties.hidden_kernel_mask(mlp), "the default rule is the study's"
    only_first = Network(module=Plain(), penalize=lambda path: path[-2] == "MultiHotDense_0" and path[-1] == "kernel")
    config = StepConfig(network=only_first)
    hp = Hyperparameters.create(l2=0.5)
    expected = 0.5 * float(jnp.sum(params["params"]["MultiHotDense_0"]["kernel"] ** 2))
    assert float(penalty(config, params, hp)) == pytest.approx(expected, rel=1e-6)
    assert default_penalized(("params", "output", "kernel")) is False


def test_a_number_whose_stage_is_off_is_refused_not_ignored(dataset):
    config = StepConfig(widths=(4, 4), use_penalty=False)
    hp = Hyperparameters.create(l2=0.01)
    with pytest.raises(ValueError, match=r"l2=0.01.* StepConfig.use_penalty=False"):
        check_stages(config, hp)
    state, _ = init_state(jax.random.key(0), config, dataset.num_words)
    from jaxreg import batches

    train = dataset.train
    order = np.arange(64)
    batch = jax.tree.map(
        lambda a: a[0],
        batches.make_batches(train.x, train.y, order, 64, batches.capacity(train.x.lengths, [order], 64)),
    )
    with pytest.raises(ValueError, match="use_penalty"):
        train_step(state, batch, jax.random.key(1), hp, config=config)
    check_stages(StepConfig(widths=(4, 4)), hp)  # on: fine
