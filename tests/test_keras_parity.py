"""jaxreg against Keras 3 itself: the study's `original` and `l2` models, same weights, same batches.

Keras 3 (JAX backend) puts RMSprop's eps inside the square root, so jaxreg runs with
StepConfig(optimizer="keras3"); the study's Keras 2.3 ("keras2", eps outside) cannot be run here.
Tolerance: both sides compute in float32 with different summation orders (jaxreg's first layer
gathers kernel rows, Keras multiplies the dense batch). Observed with keras 3.15 / jax 0.10: losses
within 2e-7 relative and weights within 6e-8 absolute after two epochs; the checks allow 1e-5
relative on losses and 1e-6 absolute on weights (which move by ~3e-3 per step). For scale: running
jaxreg with "keras2" instead moves the losses by ~1% and the weights by ~0.01 after an epoch or two.
Keras 3's Adam (jaxreg's "adam_keras") and SGD with Nesterov momentum are checked the same way.
Unlike the other test modules, this one leaves jax_numpy_rank_promotion at its default: Keras'
Dense adds its bias by implicit broadcasting ([batch, units] + [units]), which "raise" refuses.
"""

from __future__ import annotations

import dataclasses
import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Keras' own get_weights() trips a NumPy 2 deprecation; not ours to fix.
pytestmark = [
    pytest.mark.numerics,  # rerun by .ci/run with XLA held to a second instruction set
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

keras = pytest.importorskip("keras", reason="keras is not installed (pip install -e '.[dev]')")
if keras.backend.backend() != "jax":
    pytest.skip(
        f"keras was imported with the {keras.backend.backend()!r} backend before this module", allow_module_level=True
    )

from jaxreg import batches, cpu_kernels, losses, train  # noqa: E402
from jaxreg.data import densify, synthetic_dataset  # noqa: E402
from jaxreg.train import Hyperparameters, StepConfig  # noqa: E402

NUM_WORDS = 1000
BATCH = 128
N_TRAIN = 1100  # 8 batches of 128 and a last one of 76
CONFIG = StepConfig(
    widths=(16, 16), optimizer="keras3", use_dropout=False, use_weight_decay=False, use_l1_proximal=False
)
LAYERS = ("hidden_0", "hidden_1", "output")

init_state = jax.jit(train.init_state, static_argnums=(1, 2))


def _step(state, batch, key, hp, *, config):
    return train.step_function(config)(state, batch, key, hp, config=config)  # the fused step where config asks


step = jax.jit(_step, static_argnames="config")
evaluate = jax.jit(train.evaluate, static_argnames="config")


@pytest.fixture(scope="module")
def data():
    ds = synthetic_dataset(n_train=N_TRAIN, n_validation=2 * BATCH, num_words=NUM_WORDS, seed=0)
    order = batches.epoch_order(0, 0, N_TRAIN)
    cap = batches.capacity(ds.train.x.lengths, [order], BATCH)
    stacked = batches.make_batches(ds.train.x, ds.train.y, order, BATCH, cap)
    val_order = np.arange(len(ds.validation))
    val_cap = batches.capacity(ds.validation.x.lengths, [val_order], BATCH)
    val = batches.make_batches(ds.validation.x, ds.validation.y, val_order, BATCH, val_cap)
    x_dense, y = densify(ds.train.x)[order], ds.train.y[order]  # Keras' batches: the same rows in the same order
    return ds, stacked, val, x_dense, y


def _keras_model(l2, optimizer=None):
    reg = keras.regularizers.l2(l2) if l2 else None
    model = keras.Sequential(
        [
            keras.Input((NUM_WORDS,)),
            keras.layers.Dense(16, activation="relu", kernel_regularizer=reg),
            keras.layers.Dense(16, activation="relu", kernel_regularizer=reg),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    optimizer = optimizer or keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model


def _keras_weights_as_params(model):
    w = model.get_weights()  # kernel, bias per layer; Keras kernels are [in, out] like Flax's
    return {"params": {name: {"kernel": w[2 * i], "bias": w[2 * i + 1]} for i, name in enumerate(LAYERS)}}


# Keras 3's Adam and SGD beside RMSprop: (jaxreg's optimizer settings, Keras' optimizer). Adam as
# "adam_keras" (eps added to sqrt(v), bias corrections folded into the step: keras/src/optimizers/adam.py);
# Keras' SGD keeps m = momentum * m - lr * g, optax's t = g + momentum * t: the same steps at a constant rate.
OPTIMIZERS = {
    "rmsprop": (dict(optimizer="keras3"), dict(learning_rate=1e-3), lambda: None),
    "adam": (
        dict(optimizer="adam_keras"),
        dict(learning_rate=2e-3, b1=0.8, b2=0.99, eps=1e-6),
        lambda: keras.optimizers.Adam(learning_rate=2e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
    ),
    "adam_fused": (  # jaxreg's fused CPU step of the first layer (jaxreg/csrc/adam.cc)
        dict(optimizer="adam_keras", fused_update=True),
        dict(learning_rate=2e-3, b1=0.8, b2=0.99, eps=1e-6),
        lambda: keras.optimizers.Adam(learning_rate=2e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
    ),
    "sgd_nesterov": (
        dict(optimizer="sgd", nesterov=True),
        dict(learning_rate=0.05, momentum=0.9),
        lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    ),
}


@pytest.mark.parametrize(
    "name, l2, optimizer",
    [
        ("original", 0.0, "rmsprop"),
        ("l2", 1e-3, "rmsprop"),
        ("l2_adam", 1e-3, "adam"),
        ("original_adam", 0.0, "adam"),
        ("l2_adam_fused", 1e-3, "adam_fused"),
        ("l2_sgd_nesterov", 1e-3, "sgd_nesterov"),
    ],
)
def test_one_epoch_matches_keras(data, name, l2, optimizer):
    ds, stacked, val, x_dense, y = data
    changes, numbers, keras_optimizer = OPTIMIZERS[optimizer]
    if changes.get("fused_update") and (jax.default_backend() != "cpu" or not cpu_kernels.cpu_kernels_available()):
        pytest.skip("the fused step is a CPU kernel: needs the CPU backend and a C++ compiler")
    config = dataclasses.replace(CONFIG, **changes)
    keras.utils.set_random_seed(0)
    model = _keras_model(l2, keras_optimizer())
    params = _keras_weights_as_params(model)
    state, _ = init_state(jax.random.key(0), config, NUM_WORDS)
    state = state._replace(params=params)  # Keras' initial weights; the optimizer state is all zeros either way
    hp = Hyperparameters.create(l2=l2, **numbers)

    n_batches = stacked.y.shape[0]
    assert n_batches == 9 and float(np.asarray(stacked.weight[-1]).sum()) == N_TRAIN - 8 * BATCH
    keras_losses, jaxreg_losses, counts = [], [], []
    for i in range(n_batches):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        keras_losses.append(float(model.train_on_batch(x_dense[rows], y[rows, None])))  # data loss + penalty
        state, metrics = step(state, jax.tree.map(lambda a: a[i], stacked), jax.random.key(0), hp, config=config)
        jaxreg_losses.append(float(metrics["loss"]))
        counts.append(float(metrics["count"]))
    np.testing.assert_allclose(jaxreg_losses, keras_losses, rtol=1e-5)
    assert counts[-1] == 76

    final = jax.tree.map(np.asarray, _keras_weights_as_params(model))
    for layer in LAYERS:
        for leaf in ("kernel", "bias"):
            ours, theirs = state.params["params"][layer][leaf], final["params"][layer][leaf]
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, err_msg=f"{name} {layer}/{leaf}")
    moved = np.abs(final["params"]["hidden_0"]["kernel"] - params["params"]["hidden_0"]["kernel"]).max()
    assert moved > 1e-3  # the comparison is not trivially about unchanged weights

    # Keras' val_loss includes the penalty, as jaxreg's evaluate "loss"
    keras_val = model.evaluate(densify(ds.validation.x), ds.validation.y[:, None], batch_size=BATCH, verbose=0)
    ours = evaluate(state.params, val, hp, config=config)
    np.testing.assert_allclose(float(ours["loss"]), keras_val, rtol=1e-5)
    assert (float(ours["penalty"]) > 0) == (l2 > 0)


def test_keras_binary_crossentropy_is_jaxregs_keras_mode():
    logits = np.linspace(-30, 30, 61).astype(np.float32)
    for label in (0.0, 1.0):
        y = np.full_like(logits, label)
        ours = np.asarray(losses.binary_cross_entropy(logits, y, "keras"))
        theirs = np.asarray(keras.losses.binary_crossentropy(y[:, None], keras.ops.sigmoid(logits)[:, None]))
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
