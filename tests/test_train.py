"""Train step, epoch and evaluation: jit = no jit, one compile per run, exact partial batches,
fresh dropout keys, Keras' metric aggregation, exact padding, and a golden regression value.

Compiled functions are module-level and configs shared between tests: on 2 CPU cores the
compiles, not the arithmetic, are what this file spends its time on.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import batches, cpu_kernels, losses, optim, penalties, train
from jaxreg.batches import Batch
from jaxreg.data import densify, synthetic_dataset
from jaxreg.model import MLP
from jaxreg.train import Hyperparameters, StepConfig

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set

NUM_WORDS = 100
BATCH = 8
N_TRAIN = 25  # 3 full batches of 8 and a last one of 1 row (plus 7 padding rows)

ALL_STAGES = StepConfig(widths=(4, 4))  # keras loss, keras2 RMSprop, every stage on
HP_ALL = Hyperparameters.create(l1=1e-4, l2=1e-3, weight_decay=1e-2, l1_proximal=1e-3, dropout_rate=0.5)

step = jax.jit(train.train_step, static_argnames="config")
epoch = jax.jit(train.train_epoch, static_argnames="config")
evaluate = jax.jit(train.evaluate, static_argnames="config")


def _epoch_all_stages(state, stacked, key, hp):
    return train.train_epoch(state, stacked, key, hp, config=ALL_STAGES)


# Every epoch of ALL_STAGES in this module (different batches, keys and hyperparameter values)
# must reuse one compiled program: a second trace raises.
epoch_all_stages = jax.jit(chex.assert_max_traces(_epoch_all_stages, n=1))


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_train=N_TRAIN, n_validation=10, num_words=NUM_WORDS, n_signal_words=10, seed=0)


def _batches(split, seed=0, epoch_index=0, order=None):
    order = batches.epoch_order(seed, epoch_index, len(split)) if order is None else order
    cap = batches.capacity(split.x.lengths, [order], BATCH)
    return batches.make_batches(split.x, split.y, order, BATCH, cap), order


def _batch(stacked, i):
    return jax.tree.map(lambda a: a[i], stacked)


def _dense_rows(split, rows):
    """The real rows as a dense Batch (no padding): what a batch means, independently of SparseBatch."""
    x = densify(split.x.take(rows))
    return Batch(x, split.y[rows], np.ones(len(rows), np.float32))


@jax.jit
def _hand_loss(params, x, y, l1, l2):
    """Keras' batch loss by hand on dense real rows: mean clipped BCE + l1 sum|w| + l2 sum w^2 (hidden kernels)."""
    p = params["params"]
    logits = MLP((4, 4)).apply(params, x)
    data_loss = jnp.mean(losses.binary_cross_entropy(logits, y, "keras"))
    kernels = [p["hidden_0"]["kernel"], p["hidden_1"]["kernel"]]
    penalty = sum(l1 * jnp.sum(jnp.abs(k)) + l2 * jnp.sum(k * k) for k in kernels)
    return data_loss + penalty, data_loss, jnp.mean(losses.correct(logits, y))


_jit_init_state = jax.jit(train.init_state, static_argnums=(1, 2, 3))


def _init(config, true_widths=None, seed=0):
    """init_state, compiled once per distinct (widths, optimizer and its stages): configs that differ otherwise share it."""
    key_config = StepConfig(
        config.widths,
        optimizer=config.optimizer,
        schedule=config.schedule,
        use_weight_decay=config.use_weight_decay,
        use_l1_proximal=config.use_l1_proximal,
    )
    return _cached_init(key_config, true_widths, seed)


@functools.cache
def _cached_init(config, true_widths, seed):
    return _jit_init_state(jax.random.key(seed), config, NUM_WORDS, true_widths)


def test_jit_and_no_jit_agree(ds):
    state, _ = _init(ALL_STAGES)
    stacked, _ = _batches(ds.train)
    key = jax.random.key(7)
    jitted_state, jitted_metrics = step(state, _batch(stacked, 0), key, HP_ALL, config=ALL_STAGES)
    val, _ = _batches(ds.validation)
    jitted_eval = evaluate(jitted_state.params, val, HP_ALL, config=ALL_STAGES)
    # Called without jax.jit: op by op, each op compiled on its own (~150 of them, the slowest part of
    # this file). jax.disable_jit would also unroll evaluate's scan: slower, no extra coverage.
    eager_state, eager_metrics = train.train_step(state, _batch(stacked, 0), key, HP_ALL, config=ALL_STAGES)
    eager_eval = train.evaluate(eager_state.params, val, HP_ALL, config=ALL_STAGES)
    # same arithmetic, possibly fused differently: float32 rounding only
    chex.assert_trees_all_close(jitted_state, eager_state, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(jitted_metrics, eager_metrics, rtol=1e-5)
    chex.assert_trees_all_close(jitted_eval, eager_eval, rtol=1e-5)
    assert int(jitted_state.step) == 1


def test_train_epoch_compiles_once_for_a_whole_run(ds):
    state, _ = _init(ALL_STAGES)
    orders = [batches.epoch_order(0, e, N_TRAIN) for e in range(3)]
    cap = batches.capacity(ds.train.x.lengths, orders, BATCH)
    previous = None
    for e, order in enumerate(orders):
        stacked = batches.make_batches(ds.train.x, ds.train.y, order, BATCH, cap)
        hp = Hyperparameters.create(learning_rate=1e-3 * (e + 1), l1=1e-4 * e, l2=1e-3 / (e + 1), dropout_rate=0.1 * e)
        state, means = epoch_all_stages(state, stacked, jax.random.key(e), hp)  # traced at most once
        assert np.isfinite(float(means["loss"])) and float(means["loss"]) != previous
        previous = float(means["loss"])
    assert int(state.step) == 3 * 4


@pytest.fixture(scope="module")
def epoch_vs_steps(ds):
    """One epoch of train_epoch, and the same epoch stepped batch by batch with losses computed by hand.

    Dropout rate 0 (exactly the identity), so that the hand computation needs no masks.
    """
    hp = Hyperparameters.create(l1=1e-4, l2=1e-3)
    stacked, order = _batches(ds.train)
    state, _ = _init(ALL_STAGES)
    key = jax.random.key(3)
    epoch_state, means = epoch_all_stages(state, stacked, key, hp)
    states, step_metrics, by_hand = [state], [], []
    for i in range(stacked.y.shape[0]):
        rows = order[i * BATCH : (i + 1) * BATCH]
        real = _dense_rows(ds.train, rows)
        by_hand.append([float(v) for v in _hand_loss(states[-1].params, real.x, real.y, hp.l1, hp.l2)] + [len(rows)])
        new_state, metrics = step(states[-1], _batch(stacked, i), key, hp, config=ALL_STAGES)
        states.append(new_state)
        step_metrics.append(jax.tree.map(float, metrics))
    return dict(
        hp=hp,
        stacked=stacked,
        order=order,
        key=key,
        epoch_state=epoch_state,
        means=means,
        states=states,
        step_metrics=step_metrics,
        by_hand=np.array(by_hand),
    )


def test_partial_last_batch_loss_and_epoch_mean_are_exact(epoch_vs_steps):
    r = epoch_vs_steps
    loss, data_loss, accuracy, count = r["by_hand"].T
    np.testing.assert_array_equal(count, [8, 8, 8, 1])
    # each step's Keras loss (before its update, penalty included) is the mean over its real rows
    np.testing.assert_allclose([m["loss"] for m in r["step_metrics"]], loss, rtol=1e-5)
    np.testing.assert_allclose([m["data_loss"] for m in r["step_metrics"]], data_loss, rtol=1e-5)
    np.testing.assert_array_equal([m["count"] for m in r["step_metrics"]], count)
    # the epoch means weight each batch by its number of real rows (8, 8, 8, 1), as Keras
    np.testing.assert_allclose(float(r["means"]["loss"]), np.sum(loss * count) / N_TRAIN, rtol=1e-5)
    np.testing.assert_allclose(float(r["means"]["data_loss"]), np.sum(data_loss * count) / N_TRAIN, rtol=1e-5)
    np.testing.assert_allclose(float(r["means"]["accuracy"]), np.sum(accuracy * count) / N_TRAIN, rtol=1e-6)
    assert abs(float(r["means"]["loss"]) - np.mean(loss)) > 1e-4  # an unweighted mean would differ
    chex.assert_trees_all_close(r["epoch_state"], r["states"][-1], rtol=1e-6, atol=1e-8)


def test_padded_last_batch_gradient_equals_the_real_rows_gradient(ds, epoch_vs_steps):
    r = epoch_vs_steps
    # From the state after 3 steps the RMSprop accumulator is nonzero, so the step depends on the
    # gradient's magnitude (a first step from a = 0 would only see its sign): equal steps from the
    # padded sparse batch (1 real row, 7 of weight 0) and from the lone real row, dense, mean equal gradients.
    before = r["states"][3]
    padded = _batch(r["stacked"], 3)
    alone = _dense_rows(ds.train, r["order"][24:])
    from_padded, m_padded = step(before, padded, r["key"], r["hp"], config=ALL_STAGES)
    from_alone, m_alone = step(before, alone, r["key"], r["hp"], config=ALL_STAGES)
    chex.assert_trees_all_close(from_padded, from_alone, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(m_padded, m_alone, rtol=1e-6)
    assert float(m_padded["count"]) == 1.0
    # and it is not the gradient of the 8-row mean: treating padding rows as data changes the step
    as_data = Batch(padded.x, padded.y, np.ones(BATCH, np.float32))
    from_as_data, _ = step(before, as_data, r["key"], r["hp"], config=ALL_STAGES)
    output_kernel = lambda s: np.asarray(s.params["params"]["output"]["kernel"])  # noqa: E731
    assert not np.allclose(output_kernel(from_as_data), output_kernel(from_alone), rtol=1e-4)


def test_dropout_keys_are_never_reused(ds):
    state, _ = _init(ALL_STAGES)
    stacked, _ = _batches(ds.train)
    batch, key = _batch(stacked, 0), jax.random.key(11)
    frozen = HP_ALL._replace(learning_rate=jnp.float32(0.0))  # lr 0: every step leaves the parameters as they are
    s1, m1 = step(state, batch, key, frozen, config=ALL_STAGES)
    s2, m2 = step(s1, batch, key, frozen, config=ALL_STAGES)
    chex.assert_trees_all_equal(s2.params, state.params)
    # same parameters, batch and key argument, but the step counter is folded in: new dropout masks
    assert float(m1["data_loss"]) != float(m2["data_loss"])
    # replaying step 0 replays its masks exactly
    _, m1_again = step(s2._replace(step=state.step), batch, key, frozen, config=ALL_STAGES)
    chex.assert_trees_all_equal(m1_again, m1)


def test_loss_is_data_loss_plus_penalty(ds):
    state, _ = _init(ALL_STAGES)
    stacked, _ = _batches(ds.train)
    _, metrics = step(state, _batch(stacked, 0), jax.random.key(0), HP_ALL, config=ALL_STAGES)
    mask = penalties.hidden_kernel_mask(state.params)
    expected = penalties.weight_penalty(state.params, HP_ALL.l1, HP_ALL.l2, mask)  # of the parameters before the step
    np.testing.assert_allclose(metrics["penalty"], expected, rtol=1e-6)
    assert float(metrics["penalty"]) > 0
    np.testing.assert_allclose(metrics["loss"], metrics["data_loss"] + metrics["penalty"], rtol=1e-7)


def test_evaluate_loss_includes_the_penalty(ds):
    state, _ = _init(ALL_STAGES)
    val, _ = _batches(ds.validation, order=np.arange(len(ds.validation)))  # 10 rows: batches of 8 and 2
    out = evaluate(state.params, val, HP_ALL, config=ALL_STAGES)
    everything = _dense_rows(ds.validation, np.arange(len(ds.validation)))
    loss, data_loss, accuracy = _hand_loss(state.params, everything.x, everything.y, HP_ALL.l1, HP_ALL.l2)
    np.testing.assert_allclose(out["data_loss"], data_loss, rtol=1e-5)  # dropout off, mean over all 10 rows
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], accuracy, rtol=1e-6)
    np.testing.assert_allclose(out["loss"], out["data_loss"] + out["penalty"], rtol=1e-7)
    assert float(out["penalty"]) > 0


def test_evaluate_first_layer_for_all_batches_at_once_changes_nothing(ds, monkeypatch):
    """A narrow sparse first layer is computed for all validation batches in one call: the same
    sums as batch by batch, so the same metrics. To float32 round-off (rtol 1e-6), not bit for bit:
    the two are other compiled programs, which XLA may fuse differently (measured: bit for bit)."""
    state, _ = _init(ALL_STAGES)
    val, _ = _batches(ds.validation, order=np.arange(len(ds.validation)))
    assert ALL_STAGES.widths[0] <= train.ALL_BATCHES_MAX_WIDTH
    at_once = train.evaluate(state.params, val, HP_ALL, config=ALL_STAGES)
    monkeypatch.setattr(train, "ALL_BATCHES_MAX_WIDTH", 0)  # batch by batch, inside the scan
    batch_by_batch = train.evaluate(state.params, val, HP_ALL, config=ALL_STAGES)
    chex.assert_trees_all_close(at_once, batch_by_batch, rtol=1e-6, atol=0)


def test_unit_mask_keeps_padded_units_exactly_zero(ds):
    bucket, true_widths = StepConfig(widths=(8, 8)), (3, 5)
    hp = Hyperparameters.create(l1=1e-3, l2=1e-3, weight_decay=1e-2, l1_proximal=1e-3, dropout_rate=0.5)
    stacked, _ = _batches(ds.train)
    key = jax.random.key(5)
    state, unit_mask = _init(bucket, true_widths)
    masked, _ = epoch(state, stacked, key, hp, config=bucket, unit_mask=unit_mask)
    # "No mask" as an all-ones mask: multiplying by 1 changes nothing, and it reuses the compiled epoch.
    unmasked, _ = epoch(state, stacked, key, hp, config=bucket, unit_mask=jax.tree.map(jnp.ones_like, unit_mask))
    padding = [np.asarray(m) == 0 for m in jax.tree.leaves(unit_mask)]
    masked_leaves, unmasked_leaves = jax.tree.leaves(masked.params), jax.tree.leaves(unmasked.params)
    for pad, leaf in zip(padding, masked_leaves):
        assert np.all(np.asarray(leaf)[pad] == 0)
    # Without the mask the padding moves (the mask is what holds it): JAX's gradient of |w| at
    # w = 0 is 1, so L1 pushes zero weights (TF's is 0, and Keras on TF would not move them).
    assert any(np.any(np.asarray(leaf)[pad] != 0) for pad, leaf in zip(padding, unmasked_leaves))
    # The true part trains exactly as the unpadded model would alone (same key, same batches; dropout's
    # prefix property gives the real units the same masks). Float32 summation order only.
    alone_config = StepConfig(widths=true_widths)
    alone, _ = epoch(_init(alone_config)[0], stacked, key, hp, config=alone_config)

    def true_part(padded_leaf, true_leaf):
        return padded_leaf[tuple(slice(0, s) for s in true_leaf.shape)]

    true_params = jax.tree.map(true_part, masked.params, alone.params)
    chex.assert_trees_all_close(true_params, alone.params, rtol=1e-5, atol=1e-7)


def test_stages_at_zero_change_nothing(ds):
    """StepConfig's promise: a stage whose hyperparameter is 0 gives the result of dropping the stage."""
    lean = StepConfig(
        widths=(4, 4), use_penalty=False, use_dropout=False, use_weight_decay=False, use_l1_proximal=False
    )
    hp = Hyperparameters.create()
    stacked, _ = _batches(ds.train)
    (full, _), (thin, _) = _init(ALL_STAGES), _init(lean)
    for i in range(3):
        full, full_metrics = step(full, _batch(stacked, i), jax.random.key(0), hp, config=ALL_STAGES)
        thin, thin_metrics = step(thin, _batch(stacked, i), jax.random.key(0), hp, config=lean)
        chex.assert_trees_all_close(full_metrics, thin_metrics, rtol=1e-6)
    chex.assert_trees_all_close(full.params, thin.params, rtol=1e-6, atol=1e-9)


needs_kernels = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not cpu_kernels.cpu_kernels_available(),
    reason="the fused step is a CPU kernel: needs the CPU backend and a C++ compiler to build it",
)
KERAS = StepConfig(widths=(4, 4), use_weight_decay=False, use_l1_proximal=False)  # what fused_update supports
FUSED_CASES = {  # name: (unfused config, hyperparameters, true widths (padding) or None)
    "penalty_and_dropout": (KERAS, Hyperparameters.create(l1=1e-3, l2=1e-2, dropout_rate=0.5), None),
    "no_penalty_stage": (dataclasses.replace(KERAS, use_penalty=False), Hyperparameters.create(), None),
    "padded_units": (KERAS, Hyperparameters.create(l1=1e-3, l2=1e-2), (2, 3)),
    "rmsprop_exponential": (
        dataclasses.replace(KERAS, schedule="exponential"),
        Hyperparameters.create(l1=1e-3, l2=1e-2, decay_rate=0.5, decay_steps=3.0),
        None,
    ),
    "adam_penalty_and_dropout": (
        dataclasses.replace(KERAS, optimizer="adam"),
        Hyperparameters.create(l1=1e-3, l2=1e-2, dropout_rate=0.5, learning_rate=3e-3, b1=0.8, b2=0.99, eps=1e-6),
        None,
    ),
    "adam_no_penalty_piecewise": (
        dataclasses.replace(KERAS, optimizer="adam", use_penalty=False, schedule="piecewise"),
        Hyperparameters.create(learning_rate=3e-3, boundaries=(4.0, 9.0), scales=(0.5, 0.2)),
        None,
    ),
    "adam_keras_padded_units": (
        dataclasses.replace(KERAS, optimizer="adam_keras"),
        Hyperparameters.create(l1=1e-3, l2=1e-2, learning_rate=3e-3, b2=0.99),
        (2, 3),
    ),
    "adamw_cosine_padded_units": (
        dataclasses.replace(KERAS, optimizer="adamw", use_weight_decay=True, schedule="cosine"),
        Hyperparameters.create(
            l2=1e-2, weight_decay=0.1, learning_rate=1e-2, warmup_steps=2.0, decay_steps=7.0, alpha=0.1
        ),
        (3, 2),
    ),
}


# The fused kernel makes fused multiply-adds where XLA's code generator makes them on AVX2
# (bit for bit there for RMSprop, measured on AMD EPYC Zen 3); where XLA contracts other products
# (another instruction set: AVX-512, or XLA held to SSE4.2 while the kernel keeps its FMAs) a few
# elements per step round differently. Measured after these 2 epochs with XLA at SSE4.2:
# 6-10% of the kernel's elements differ, by at most 3e-8 (about one float32 ulp per step); Adam
# (AVX-512, Zen 4, 3 epochs): at most 1.5e-8 absolute on weights that moved by 0.01-0.04.
FUSED_RTOL, FUSED_ATOL = 1e-5, 1e-7


@needs_kernels
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_update_equals_the_optax_path_to_float32_round_off(ds, case):
    """fused_update steps the first layer with one CPU kernel; the parameters and the optimizer
    state equal the optax chain's to float32 round-off (FUSED_RTOL, FUSED_ATOL), and the
    reported losses too (the penalty's value is summed in another order)."""
    config, hp, true_widths = FUSED_CASES[case]
    fused = dataclasses.replace(config, fused_update=True)
    stacked, _ = _batches(ds.train)
    state, unit_mask = _init(config, true_widths)
    runs = {}
    for c in (config, fused):
        s, history = state, []
        for e in range(2):
            s, metrics = epoch(s, stacked, jax.random.key(e), hp, config=c, unit_mask=unit_mask)
            history.append(metrics)
        runs[c.fused_update] = (s, history)
    (plain, plain_history), (kernel, kernel_history) = runs[False], runs[True]
    jaxpr = jax.make_jaxpr(functools.partial(train.train_epoch, config=fused))(
        state, stacked, jax.random.key(0), hp, unit_mask=unit_mask
    )
    assert optim.FUSED_TARGETS[config.optimizer] in str(jaxpr), "the fused step runs the kernel"
    assert not np.allclose(kernel.params["params"]["hidden_0"]["kernel"], state.params["params"]["hidden_0"]["kernel"])
    chex.assert_trees_all_close(kernel.params, plain.params, rtol=FUSED_RTOL, atol=FUSED_ATOL)
    chex.assert_trees_all_close(kernel.opt_state, plain.opt_state, rtol=FUSED_RTOL, atol=FUSED_ATOL)
    chex.assert_trees_all_close(kernel_history, plain_history, rtol=2e-6)
    if config.use_penalty:
        assert all(float(m["penalty"]) > 0 for m in kernel_history)
    if true_widths is not None:
        padding = np.asarray(train._at(unit_mask, train.FUSED_PATH)) == 0
        assert np.all(np.asarray(train._at(kernel.params, train.FUSED_PATH))[padding] == 0)


@needs_kernels
def test_fused_update_under_vmap_equals_each_variant_alone(ds):
    """Variants with their own hyperparameters in one vmapped call of the kernel: each equals its own
    unbatched run (the kernel's per-variant scalars and shared mask broadcast correctly).

    To float32 round-off (FUSED_RTOL, FUSED_ATOL), not bit for bit: the vmapped step and the
    unbatched one are two compiled programs, and XLA may contract the products around the kernel
    differently in each (seen on AVX-512: one element in 400 one ulp apart after one step).
    The two variants' updates differ by far more than that, so a swapped or shared scalar fails."""
    fused = dataclasses.replace(KERAS, fused_update=True)
    hps = [Hyperparameters.create(l1=1e-3, l2=1e-2), Hyperparameters.create(l2=3e-2, learning_rate=2e-3)]
    stacked, _ = _batches(ds.train)
    state, unit_mask = _init(KERAS, (2, 3))
    fused_step = jax.jit(train.fused_train_step, static_argnames="config")
    alone = [
        fused_step(state, _batch(stacked, 0), jax.random.key(0), hp, config=fused, unit_mask=unit_mask)[0] for hp in hps
    ]
    stacked_hp = jax.tree.map(lambda *x: jnp.stack(x), *hps)
    one_step = functools.partial(train.fused_train_step, batch=_batch(stacked, 0), key=jax.random.key(0), config=fused)
    # the initial state and the mask are shared (unbatched): the kernel gets them broadcast
    together = jax.jit(jax.vmap(lambda s, hp, m: one_step(s, hp=hp, unit_mask=m)[0], in_axes=(None, 0, None)))(
        state, stacked_hp, unit_mask
    )
    kernels = [np.asarray(one.params["params"]["hidden_0"]["kernel"]) for one in alone]
    assert not np.allclose(kernels[0], kernels[1], rtol=100 * FUSED_RTOL, atol=100 * FUSED_ATOL)
    for i, one in enumerate(alone):
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x[i], together.params), one.params, rtol=FUSED_RTOL, atol=FUSED_ATOL
        )


@needs_kernels
def test_fused_adam_under_vmap_equals_each_variant_alone(ds):
    """AdamW with a schedule, every number different per variant (b1, b2, eps, rate, decay, penalty), in
    one vmapped kernel call over 3 steps (so the bias corrections and the schedule's rate move):
    each variant equals its own unbatched run, to float32 round-off as above."""
    config = dataclasses.replace(KERAS, optimizer="adamw", use_weight_decay=True, schedule="exponential")
    fused = dataclasses.replace(config, fused_update=True)
    numbers = dict(decay_rate=0.5, decay_steps=2.0)
    hps = [
        Hyperparameters.create(l1=1e-3, l2=1e-2, learning_rate=3e-3, weight_decay=0.1, **numbers),
        Hyperparameters.create(l2=3e-2, learning_rate=1e-2, b1=0.5, b2=0.9, eps=1e-5, weight_decay=0.3, **numbers),
    ]
    stacked, _ = _batches(ds.train)
    state, unit_mask = _init(config, (2, 3))

    def three_steps(s, hp):
        for i in range(3):
            s, _ = train.fused_train_step(
                s, _batch(stacked, i), jax.random.key(0), hp, config=fused, unit_mask=unit_mask
            )
        return s

    alone = [jax.jit(three_steps)(state, hp) for hp in hps]
    together = jax.jit(jax.vmap(three_steps, in_axes=(None, 0)))(state, jax.tree.map(lambda *x: jnp.stack(x), *hps))
    kernels = [np.asarray(one.params["params"]["hidden_0"]["kernel"]) for one in alone]
    assert not np.allclose(kernels[0], kernels[1], rtol=100 * FUSED_RTOL, atol=100 * FUSED_ATOL)
    for i, one in enumerate(alone):
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], together), one, rtol=FUSED_RTOL, atol=FUSED_ATOL)


def test_fused_step_without_the_kernels_says_so(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "cpu_kernels_available", lambda: False)
    w = jnp.zeros((10, 4))
    pairs = jnp.zeros((3,), jnp.int16)
    with pytest.raises(RuntimeError, match="needs jaxreg's CPU kernels"):
        optim.keras_rmsprop_step(w, w, jnp.zeros((2, 4)), pairs, pairs, 0.0, 0.0, 1e-3)
    with pytest.raises(RuntimeError, match="the fused adam step needs jaxreg's CPU kernels"):
        optim.fused_table_step("adam", w, (w, w), jnp.zeros((2, 4)), pairs, pairs, jnp.zeros(9))
    monkeypatch.setattr(cpu_kernels, "cpu_kernels_available", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # seen on an H200: XLA's NOT_FOUND otherwise
    with pytest.raises(RuntimeError, match="is a CPU kernel; the default backend here is 'gpu'"):
        optim.keras_rmsprop_step(w, w, jnp.zeros((2, 4)), pairs, pairs, 0.0, 0.0, 1e-3)


def test_fused_update_is_refused_where_it_would_not_be_exact():
    unsupported_cases = (
        dict(optimizer="keras3"),
        dict(optimizer="sgd"),
        dict(optimizer="lion"),
        dict(use_weight_decay=True),  # with RMSprop: rmsprop.cc has no decay
        dict(optimizer="adam", use_l1_proximal=True),
        dict(use_l1_proximal=True),
        dict(product="dense"),
    )
    for unsupported in unsupported_cases:
        with pytest.raises(ValueError, match="fused_update needs the study's MLP, product='sparse', an optimizer of"):
            dataclasses.replace(KERAS, fused_update=True, **unsupported)
    assert train.fused_update_supports(KERAS) and not train.fused_update_supports(ALL_STAGES)
    for supported in (dict(optimizer="adamw", use_weight_decay=True), dict(optimizer="adam_keras", schedule="cosine")):
        assert train.fused_update_supports(dataclasses.replace(KERAS, **supported)), supported


# Golden values: the Keras loss (data loss + penalty, dropout active) of the first 3 train steps
# of the fixed tiny problem below. Recorded on 2026-11-26 with jax 0.10.2, flax 0.12.8, optax 0.2.8
# on CPU (printed by this test with -s), after the tests above and tests/test_keras_parity.py
# (losses and weights equal to Keras 3's within 2e-7) had verified the implementation. Re-record
# only for an intended change of semantics (loss, RMSprop, dropout, initialization, batching or
# the PRNG), never to make a failure go away: float32 reordering moves them by ~1e-7 relative.
GOLDEN_LOSSES = [0.7322367, 0.6559165, 0.6856048]


def test_golden_first_three_steps():
    ds = synthetic_dataset(n_train=64, n_validation=16, num_words=NUM_WORDS, n_signal_words=10, seed=0)
    stacked, _ = _batches(ds.train)  # epoch_order(0, 0, 64), batches of 8
    hp = Hyperparameters.create(l2=1e-3, dropout_rate=0.5)  # widths (4, 4), keras loss, keras2 RMSprop
    state, _ = _init(ALL_STAGES, seed=0)
    got = []
    for i in range(3):
        state, metrics = step(state, _batch(stacked, i), jax.random.key(1), hp, config=ALL_STAGES)
        got.append(float(metrics["loss"]))
    print("golden losses:", [f"{v:.9g}" for v in got])
    np.testing.assert_allclose(got, GOLDEN_LOSSES, rtol=1e-6)
