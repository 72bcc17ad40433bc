"""Flax NNX modules as own models: built per seed, trained by the engine as Linen modules are,
equal modules sharing one program, penalties on their kernels, dropout per variant or their own."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxreg import penalties
from jaxreg.data import synthetic_dataset
from jaxreg.dropout import dropout
from jaxreg.errors import SweepError
from jaxreg.model import MultiHotDense, multi_hot_matmul
from jaxreg.networks import Network, nnx_model
from jaxreg.variants import RunSettings, VariantError, VariantSpec, plan, run, with_seeds

SETTINGS = RunSettings(epochs=3, batch_size=128, eval_batch_size=256)
NUM_WORDS = 300


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n_train=600, n_validation=200, num_words=NUM_WORDS, seed=1)


class NNXMLP(nnx.Module):
    """jaxreg style in NNX: multi-hot (sparse or dense) -> ReLU layer -> traced dropout -> one logit."""

    def __init__(self, num_words: int, hidden: int, outputs: int = 1, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(num_words, hidden, rngs=rngs)
        self.output = nnx.Linear(hidden, outputs, rngs=rngs)

    def __call__(self, x, dropout_rate, dropout_key):
        h = jax.nn.relu(multi_hot_matmul(x, self.hidden.kernel[...]) + self.hidden.bias[...])
        return self.output(dropout(h, dropout_rate, dropout_key))


class LinenMLP(nn.Module):
    """The same model in Linen, its parameters laid out as NNXMLP's: hidden and output, kernel and bias."""

    hidden: int

    @nn.compact
    def __call__(self, x, dropout_rate, dropout_key):
        h = nn.relu(MultiHotDense(self.hidden, name="hidden")(x))
        return nn.Dense(1, name="output")(dropout(h, dropout_rate, dropout_key))


class NNXLayers(nnx.Module):
    """Hidden layers in an nnx.List: NNX names them 0, 1, ...; jaxreg's parameter dict, "0", "1", ..."""

    def __init__(self, num_words: int, widths: tuple = (8, 4), *, rngs: nnx.Rngs):
        self.first = nnx.Linear(num_words, widths[0], rngs=rngs)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.output = nnx.Linear(widths[-1], 1, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(multi_hot_matmul(x, self.first.kernel[...]) + self.first.bias[...])
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.output(h)


class NNXDropout(nnx.Module):
    """Flax style in NNX: an nnx.Dropout layer at its own rate, switched by train()/eval()."""

    def __init__(self, num_words: int, rate: float, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(num_words, 8, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.output = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.output(self.drop(jax.nn.relu(multi_hot_matmul(x, self.hidden.kernel[...]) + self.hidden.bias[...])))


def test_an_nnx_module_trains_as_the_equivalent_linen_module(dataset):
    """Same initial values (the NNX module's), same math: the NNX run's history is the Linen run's
    to float32 round-off (two compiled programs), with a dropout rate and an L2 penalty per variant."""
    own = nnx_model(NNXMLP, NUM_WORDS, hidden=8)
    linen = Network(init_fn=own.init, apply_fn=LinenMLP(8).apply)
    common = dict(l2=1e-3, dropout_rate=0.3)
    result = run(
        with_seeds([VariantSpec("nnx", model=own, **common), VariantSpec("linen", model=linen, **common)], [0, 1]),
        dataset,
        SETTINGS,
    )
    assert len(result.buckets) == 2 and result.buckets[0]["model"] == "NNXMLP(300, hidden=8)"
    for seed in (0, 1):
        a, b = result.history[("linen", seed)], result.history[("nnx", seed)]
        for metric in a:
            np.testing.assert_allclose(b[metric], a[metric], rtol=1e-5, atol=1e-7, err_msg=metric)
        assert b["loss"][-1] < b["loss"][0] and np.all(b["penalty"] > 0)
    first = [result.params[("nnx", s)].final["params"]["hidden"]["kernel"] for s in (0, 1)]
    assert not np.allclose(first[0], first[1]), "each seed draws its own initial values"
    assert set(result.params[("nnx", 0)].final["params"]) == {"hidden", "output"}


def test_each_seed_builds_the_module_from_its_own_key():
    own = nnx_model(NNXMLP, NUM_WORDS, hidden=8)
    x = jnp.zeros((1, NUM_WORDS), jnp.float32)
    a, again, b = own.init(jax.random.key(0), x), own.init(jax.random.key(0), x), own.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, a, again)
    assert not np.allclose(a["params"]["hidden"]["kernel"], b["params"]["hidden"]["kernel"])
    expected = NNXMLP(NUM_WORDS, 8, rngs=nnx.Rngs(jax.random.key(0)))
    np.testing.assert_array_equal(a["params"]["hidden"]["kernel"], expected.hidden.kernel[...])


def test_equal_nnx_modules_share_one_program():
    specs = [
        VariantSpec("a", model=nnx_model(NNXMLP, NUM_WORDS, hidden=8)),
        VariantSpec("a_dropout", model=nnx_model(NNXMLP, NUM_WORDS, hidden=8), dropout_rate=0.5, l2=1e-4),
        VariantSpec("wider", model=nnx_model(NNXMLP, NUM_WORDS, hidden=16)),
    ]
    assert nnx_model(NNXMLP, NUM_WORDS, hidden=8) == nnx_model(NNXMLP, NUM_WORDS, hidden=8)
    assert len(plan(specs)) == 2, "the two hidden=8 variants share a program, hidden=16 has its own"
    assert specs[0].model.name == "NNXMLP(300, hidden=8)"


def test_an_l2_penalty_reaches_the_nnx_kernels_but_not_the_output(dataset):
    own = nnx_model(NNXMLP, NUM_WORDS, hidden=8)
    params = own.init(jax.random.key(0), jnp.zeros((1, NUM_WORDS), jnp.float32))
    mask = penalties.kernel_mask(params, own.penalize)
    assert mask["params"]["hidden"] == {"kernel": True, "bias": False}
    assert mask["params"]["output"] == {"kernel": False, "bias": False}
    expected = 0.01 * float(jnp.sum(params["params"]["hidden"]["kernel"] ** 2))
    assert expected > 0
    assert float(penalties.l2_penalty(params, 0.01, mask)) == pytest.approx(expected, rel=1e-6)
    # in a run: the penalty recorded for the final parameters is the manual sum over the hidden kernel
    result = run([VariantSpec("l2", model=own, l2=0.01)], dataset, SETTINGS)
    final = result.params[("l2", 0)].final["params"]
    manual = 0.01 * float(np.sum(np.asarray(final["hidden"]["kernel"], np.float64) ** 2))
    assert result.history[("l2", 0)]["val_penalty"][-1] == pytest.approx(manual, rel=1e-5)


def test_listed_layers_are_parameters_under_string_keys_and_penalized():
    own = nnx_model(NNXLayers, NUM_WORDS, widths=(8, 4, 2))
    params = own.init(jax.random.key(0), jnp.zeros((1, NUM_WORDS), jnp.float32))
    assert set(params["params"]["layers"]) == {"0", "1"}
    mask = penalties.kernel_mask(params, own.penalize)
    assert (
        mask["params"]["layers"]["1"]["kernel"]
        and mask["params"]["first"]["kernel"]
        and not mask["params"]["output"]["kernel"]
    )
    moved = jax.tree.map(lambda p: p + 0.5, params)  # the parameters given are the ones used, list entries included
    reference = NNXLayers(NUM_WORDS, (8, 4, 2), rngs=nnx.Rngs(0))
    nnx.update(reference, nnx.State(jax.tree.map(lambda p: p + 0.5, nnx.to_pure_dict(nnx.state(reference, nnx.Param)))))
    x = jnp.ones((3, NUM_WORDS), jnp.float32)
    np.testing.assert_allclose(jax.jit(own.apply)(moved, x), reference(x), rtol=1e-5)


def test_dropout_rates_per_variant_reach_a_jaxreg_style_nnx_module(dataset):
    own = nnx_model(NNXMLP, NUM_WORDS, hidden=8)
    specs = [VariantSpec(f"rate{r}", model=own, dropout_rate=r) for r in (0.0, 0.5)]
    h = run(specs, dataset, SETTINGS).history
    assert len(plan(specs)) == 1
    assert not np.allclose(h[("rate0.0", 0)]["loss"], h[("rate0.5", 0)]["loss"])


def test_an_nnx_dropout_layer_drops_out_in_training_only(dataset):
    own = nnx_model(NNXDropout, NUM_WORDS, 0.5)
    assert own.style == "flax" and not own.takes_dropout_rate
    params = own.init(jax.random.key(0), jnp.zeros((1, NUM_WORDS), jnp.float32))
    x = jnp.ones((4, NUM_WORDS), jnp.float32)
    apply = jax.jit(own.apply)
    evaluated = apply(params, x)
    np.testing.assert_array_equal(evaluated, apply(params, x))
    step1, step2 = apply(params, x, 0.0, jax.random.key(1)), apply(params, x, 0.0, jax.random.key(2))
    assert not np.allclose(step1, evaluated) and not np.allclose(step1, step2), "each step's key draws its own mask"
    with pytest.raises(VariantError, match="dropout_rate=0.5 does not reach model NNXDropout"):
        VariantSpec("x", model=own, dropout_rate=0.5)
    h = run(
        [VariantSpec("drop", model=own), VariantSpec("none", model=nnx_model(NNXDropout, NUM_WORDS, 0.0))],
        dataset,
        SETTINGS,
    ).history
    assert h[("drop", 0)]["loss"][-1] < h[("drop", 0)]["loss"][0]
    assert not np.allclose(h[("drop", 0)]["loss"], h[("none", 0)]["loss"])


class NNXTrainFlag(NNXDropout):
    """Flax style with a flag: __call__(x, train) switches the nnx.Dropout layer itself."""

    def __call__(self, x, train: bool = False):
        h = jax.nn.relu(multi_hot_matmul(x, self.hidden.kernel[...]) + self.hidden.bias[...])
        return self.output(self.drop(h, deterministic=not train))


def test_an_nnx_module_with_a_train_flag_gets_it_and_a_key_per_step():
    own = nnx_model(NNXTrainFlag, NUM_WORDS, 0.5)
    assert own.style == "flax"
    params = own.init(jax.random.key(0), jnp.zeros((1, NUM_WORDS), jnp.float32))
    x = jnp.ones((4, NUM_WORDS), jnp.float32)
    apply = jax.jit(own.apply)
    evaluated = apply(params, x)
    reference = NNXDropout(NUM_WORDS, 0.5, rngs=nnx.Rngs(jax.random.key(0)))
    np.testing.assert_allclose(evaluated, nnx.view(reference, deterministic=True)(x), rtol=1e-6)
    step1, step2 = apply(params, x, 0.0, jax.random.key(1)), apply(params, x, 0.0, jax.random.key(2))
    assert not np.allclose(step1, evaluated) and not np.allclose(step1, step2)


class WithBatchNorm(nnx.Module):
    def __init__(self, *, rngs):
        self.norm = nnx.BatchNorm(NUM_WORDS, rngs=rngs)

    def __call__(self, x):
        return self.norm(x)


class NeedsLabels(nnx.Module):
    def __init__(self, *, rngs):
        self.output = nnx.Linear(NUM_WORDS, 1, rngs=rngs)

    def __call__(self, x, labels):
        return self.output(x)


def test_unusable_nnx_models_are_refused_in_one_line(dataset):
    instance = NNXMLP(NUM_WORDS, 8, rngs=nnx.Rngs(0))
    refusals = [
        (
            lambda: VariantSpec("x", model=instance),
            VariantError,
            r"NNXMLP is a Flax NNX module: pass jaxreg.nnx_model\(NNXMLP",
        ),
        (
            lambda: VariantSpec("x", model=NNXMLP),
            VariantError,
            r"NNXMLP is a Flax NNX module class: pass jaxreg.nnx_model",
        ),
        (lambda: nnx_model(WithBatchNorm), TypeError, "WithBatchNorm holds NNX state of type BatchStat"),
        (
            lambda: nnx_model(NNXMLP, NUM_WORDS),
            TypeError,
            r"building NNXMLP\(\.\.\., rngs=nnx.Rngs\(key\)\) failed: TypeError",
        ),
        (lambda: nnx_model(NeedsLabels), TypeError, "needs labels, which jaxreg does not pass"),
        (lambda: nnx_model(NNXMLP, [NUM_WORDS], hidden=8), TypeError, "hashable"),
        (lambda: nnx_model(NNXMLP, NUM_WORDS, hidden=8, rngs=nnx.Rngs(0)), TypeError, "takes no rngs"),
    ]
    for make, error, message in refusals:
        with pytest.raises(error, match=message) as caught:
            make()
        assert "\n" not in str(caught.value), str(caught.value)
    three_outputs = VariantSpec("x", model=nnx_model(NNXMLP, NUM_WORDS, hidden=4, outputs=3))
    with pytest.raises(SweepError, match=r"model NNXMLP\(300, hidden=4, outputs=3\) returns outputs of shape \(1, 3\)"):
        run([three_outputs], dataset, SETTINGS)
