"""Optimizers and learning-rate schedules per variant (jaxreg.optim): each against optax's own.

jaxreg steps the study's MLP with `train.train_step` (its numbers traced, as under vmap); the
reference steps the same model on the same batches with optax's ready-made optimizer and
schedule (optax.adam, optax.warmup_cosine_decay_schedule, ...) around the same loss. Two
different compiled programs, so float32 round-off: observed within 2e-7 absolute on weights
that move by >1e-3 (Adam and Lion normalize each coordinate's step, so round-off in a near-zero
gradient moves a weight by up to ~1e-4 of a step); asserted at RTOL/ATOL, with a margin for
other instruction sets. Also: variants that differ only in numbers share a program, a resume in the
middle of a schedule equals the uninterrupted run bit for bit (same program), and the
coupled penalties, decoupled decay and proximal L1 work with every optimizer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import batches, checkpoint, optim, penalties, runplan, train
from jaxreg.data import synthetic_dataset
from jaxreg.train import Hyperparameters, StepConfig
from jaxreg.variants import RunSettings, VariantError, VariantSpec, plan, run

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set

RTOL, ATOL = 1e-5, 1e-6
NUM_WORDS, BATCH, N_TRAIN = 500, 128, 640  # 5 batches, stepped twice: 10 steps
STEPS = 10
BASE = StepConfig(widths=(16, 16), use_dropout=False, use_penalty=False, use_weight_decay=False, use_l1_proximal=False)

step = jax.jit(train.train_step, static_argnames="config")


@pytest.fixture(scope="module")
def data():
    ds = synthetic_dataset(n_train=N_TRAIN, n_validation=BATCH, num_words=NUM_WORDS, seed=0)
    order = batches.epoch_order(0, 0, N_TRAIN)
    cap = batches.capacity(ds.train.x.lengths, [order], BATCH)
    stacked = batches.make_batches(ds.train.x, ds.train.y, order, BATCH, cap)
    return ds, [jax.tree.map(lambda a: a[i % stacked.y.shape[0]], stacked) for i in range(STEPS)]


def _jaxreg_params(config, hp, batch_list):
    state, _ = train.init_state(jax.random.key(0), config, NUM_WORDS)
    start = state.params
    for b in batch_list:
        state, _ = step(state, b, jax.random.key(0), hp, config=config)
    return start, state.params


def _optax_params(config, hp, reference, batch_list, params):
    """The same MLP and loss (penalty included) stepped by optax's own optimizer `reference`."""
    mask = penalties.kernel_mask(params, config.penalize)

    @jax.jit
    def ref_step(params, opt_state, b):
        loss_fn = train._objective(config, b, hp, None, mask)
        grads = jax.grad(lambda p: loss_fn(p)[0])(params)
        updates, opt_state = reference.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = reference.init(params)
    for b in batch_list:
        params, opt_state = ref_step(params, opt_state, b)
    return params


LR = 3e-3
CASES = {  # name: (StepConfig changes, Hyperparameters, optax's optimizer)
    "sgd_momentum": (dict(optimizer="sgd"), dict(learning_rate=0.5, momentum=0.9), optax.sgd(0.5, momentum=0.9)),
    "sgd_nesterov": (
        dict(optimizer="sgd", nesterov=True),
        dict(learning_rate=0.5, momentum=0.8),
        optax.sgd(0.5, momentum=0.8, nesterov=True),
    ),
    "adam": (
        dict(optimizer="adam"),
        dict(learning_rate=LR, b1=0.8, b2=0.99, eps=1e-6),
        optax.adam(LR, b1=0.8, b2=0.99, eps=1e-6),
    ),
    "lion": (
        dict(optimizer="lion"),
        dict(learning_rate=LR / 10, b1=0.9, b2=0.99),
        optax.lion(LR / 10, b1=0.9, b2=0.99, weight_decay=0.0),
    ),
    "adam_exponential": (
        dict(optimizer="adam", schedule="exponential"),
        dict(learning_rate=LR, decay_rate=0.5, decay_steps=4.0),
        optax.adam(optax.exponential_decay(LR, transition_steps=4, decay_rate=0.5), eps=1e-7),
    ),
    "sgd_cosine_warmup": (
        dict(optimizer="sgd", schedule="cosine"),
        dict(learning_rate=0.5, momentum=0.9, warmup_steps=3.0, decay_steps=8.0, alpha=0.1),
        optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.5, 3, 8, end_value=0.05), momentum=0.9),
    ),
    "adam_piecewise": (
        dict(optimizer="adam", schedule="piecewise"),
        dict(learning_rate=LR, boundaries=(3, 6), scales=(0.5, 0.1)),
        optax.adam(optax.piecewise_constant_schedule(LR, {3: 0.5, 6: 0.1}), eps=1e-7),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_and_schedule_match_optax(data, case):
    changes, numbers, reference = CASES[case]
    config = dataclasses.replace(BASE, **changes)
    hp = Hyperparameters.create(**numbers)
    start, ours = _jaxreg_params(config, hp, data[1])
    theirs = _optax_params(config, hp, reference, data[1], start)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(start)))
    assert moved > 1e-3, "the parameters moved"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=case), ours, theirs)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "lion"])
def test_penalties_and_decoupled_decay_work_with_every_optimizer(data, optimizer):
    """Coupled L2 + L1 (in the loss), decoupled decay before the learning rate: optax's chain with its
    add_decayed_weights on the same kernels (adamw: exactly optax.adamw)."""
    config = dataclasses.replace(BASE, optimizer=optimizer, use_penalty=True, use_weight_decay=True)
    numbers = dict(
        learning_rate=LR, l1=1e-4, l2=1e-3, weight_decay=0.05, **({"momentum": 0.5} if optimizer == "sgd" else {})
    )
    hp = Hyperparameters.create(**numbers)
    start, ours = _jaxreg_params(config, hp, data[1])
    mask = penalties.kernel_mask(start, config.penalize)
    direction = {
        "sgd": optax.trace(0.5),
        "adam": optax.scale_by_adam(eps=1e-7),
        "adamw": None,
        "lion": optax.scale_by_lion(b1=0.9, b2=0.999),
    }[optimizer]
    if optimizer == "adamw":
        reference = optax.adamw(LR, eps=1e-7, weight_decay=0.05, mask=mask)
    else:
        reference = optax.chain(direction, optax.add_decayed_weights(0.05, mask), optax.scale_by_learning_rate(LR))
    theirs = _optax_params(config, hp, reference, data[1], start)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=optimizer), ours, theirs)
    without = _jaxreg_params(
        dataclasses.replace(config, use_weight_decay=False), hp._replace(weight_decay=0.0), data[1]
    )[1]
    assert np.abs(ours["params"]["hidden_1"]["kernel"]).sum() < np.abs(without["params"]["hidden_1"]["kernel"]).sum()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_proximal_l1_follows_the_schedule(data, optimizer):
    """Proximal L1 soft-thresholds by the scheduled rate x strength; exact zeros appear."""
    config = dataclasses.replace(BASE, optimizer=optimizer, schedule="exponential", use_l1_proximal=True)
    numbers = dict(learning_rate=LR, decay_rate=0.5, decay_steps=4.0, l1_proximal=5.0)
    hp = Hyperparameters.create(**numbers, **({"momentum": 0.5} if optimizer == "sgd" else {}))
    start, ours = _jaxreg_params(config, hp, data[1])
    mask = penalties.kernel_mask(start, config.penalize)
    schedule = optax.exponential_decay(LR, 4, 0.5)
    direction = optax.trace(0.5) if optimizer == "sgd" else optax.scale_by_adam(eps=1e-7)
    reference = optax.chain(direction, optax.scale_by_learning_rate(schedule), _prox(lambda c: schedule(c) * 5.0, mask))
    theirs = _optax_params(config, hp, reference, data[1], start)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), ours, theirs)
    assert np.mean(np.asarray(ours["params"]["hidden_1"]["kernel"]) == 0) > 0.05


def _prox(threshold_at, mask):
    """Soft-thresholding written apart from jaxreg's, counting its own steps."""

    def update(updates, count, params):
        def prox(u, w, m):
            moved = w + u
            return jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - threshold_at(count), 0.0) - w if m else u

        return jax.tree.map(prox, updates, params, mask), count + 1

    return optax.GradientTransformation(lambda p: jnp.zeros((), jnp.int32), update)


def test_variants_differing_only_in_numbers_share_a_program(data):
    numbers = [dict(learning_rate=1e-3, b1=0.9), dict(learning_rate=1e-2, b1=0.5, b2=0.99, eps=1e-5)]
    adams = [
        VariantSpec(f"adam{i}", optimizer="adam", schedule="cosine", warmup_steps=i, decay_steps=100, **n)
        for i, n in enumerate(numbers)
    ]
    others = [
        VariantSpec("sgd", optimizer="sgd", momentum=0.9),
        VariantSpec("nesterov", optimizer="sgd", nesterov=True),
        VariantSpec("adam_const", optimizer="adam"),
        VariantSpec("rms", learning_rate=1e-2),
        VariantSpec("pw1", optimizer="adam", schedule="piecewise", boundaries=(5,), scales=(0.1,)),
        VariantSpec("pw2", optimizer="adam", schedule="piecewise", boundaries=(5, 9), scales=(0.1, 0.5)),
    ]
    buckets = plan(adams + others + [VariantSpec("rms2", learning_rate=3e-3)])
    assert sorted(len(b.configs) for b in buckets) == [1, 1, 1, 1, 1, 2, 2]
    grouped = {tuple(c.name for c in b.configs) for b in buckets}
    assert ("adam0", "adam1") in grouped and ("rms", "rms2") in grouped
    # the numbers are traced: one trace of the step for both adams' numbers
    traces = []

    def counted(state, b, hp, config):
        traces.append(1)
        return train.train_step(state, b, jax.random.key(0), hp, config=config)

    counted_step = jax.jit(counted, static_argnames="config")
    config = buckets[[tuple(c.name for c in b.configs) for b in buckets].index(("adam0", "adam1"))].step_config(
        BASE.task, "sparse"
    )
    state, _ = train.init_state(jax.random.key(0), config, NUM_WORDS)
    for spec in adams:
        counted_step(state, data[1][0], spec.hyperparameters(), config)
    assert len(traces) == 1


def test_the_fused_update_takes_rmsprop_and_the_adams_and_others_take_optax():
    cpu = jax.devices("cpu")
    specs = [
        VariantSpec("rms"),
        VariantSpec("adam", optimizer="adam"),
        VariantSpec("cos", schedule="cosine", decay_steps=10),
        VariantSpec("adamw", optimizer="adamw", weight_decay=0.1),
        VariantSpec("adam_keras", optimizer="adam_keras"),
        VariantSpec("sgd", optimizer="sgd"),
        VariantSpec("lion", optimizer="lion"),
        VariantSpec("keras3", optimizer="keras3"),
        VariantSpec("rms_decay", weight_decay=0.1),
        VariantSpec("adam_prox", optimizer="adam", l1_proximal=1e-3),
    ]
    settings = RunSettings()
    fused = {b.configs[0].name: runplan.execution(b, settings, cpu).step.fused_update for b in plan(specs)}
    assert set(fused) == {s.name for s in specs}
    if runplan.cpu_kernels_on(cpu):
        assert {name for name, f in fused.items() if f} == {"rms", "adam", "cos", "adamw", "adam_keras"}
    else:
        assert not any(fused.values())


def test_invalid_settings_are_refused_by_name():
    with pytest.raises(VariantError, match=r"optimizer='adagrad' must be one of"):
        VariantSpec("v", optimizer="adagrad")
    with pytest.raises(VariantError, match=r"b1=0.5 is not read by optimizer 'sgd'"):
        VariantSpec("v", optimizer="sgd", b1=0.5)
    with pytest.raises(VariantError, match=r"eps=1e-08 is not read by optimizer 'keras2'"):
        VariantSpec("v", eps=1e-8)
    with pytest.raises(VariantError, match=r"nesterov=True is for optimizer 'sgd'"):
        VariantSpec("v", optimizer="adam", nesterov=True)
    with pytest.raises(VariantError, match=r"decay_steps=5.0 must be > warmup_steps"):
        VariantSpec("v", schedule="cosine", warmup_steps=5, decay_steps=5)
    with pytest.raises(VariantError, match=r"boundaries=\(5, 3\) must be one or more increasing"):
        VariantSpec("v", schedule="piecewise", boundaries=(5, 3), scales=(1, 1))
    with pytest.raises(VariantError, match=r"scales=\(1,\) must be one number >= 0 per boundary"):
        VariantSpec("v", schedule="piecewise", boundaries=(5, 7), scales=(1,))
    spec = VariantSpec("v", optimizer="adam", schedule="piecewise", boundaries=[5, 7], scales=[0.5, 0.1], b2=0.99)
    d = spec.to_dict()
    assert (d["optimizer"], d["schedule"], d["boundaries"], d["scales"], d["b2"]) == (
        "adam",
        "piecewise",
        [5, 7],
        [0.5, 0.1],
        0.99,
    )
    assert VariantSpec.from_dict({k: v for k, v in d.items() if k != "model"}) == spec


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_resume_mid_schedule_equals_the_uninterrupted_run(tmp_path, optimizer):
    """The schedule's step count lives in the optimizer state, which the checkpoint saves: bit for bit.
    On a CPU with jaxreg's kernels, through the fused first-layer step (its bias corrections and
    scheduled rate come from those counts)."""
    ds = synthetic_dataset(n_train=N_TRAIN, n_validation=BATCH, num_words=NUM_WORDS, seed=1)
    settings = RunSettings(epochs=3, batch_size=BATCH, eval_batch_size=BATCH)
    decay = {"weight_decay": 0.1} if optimizer == "adamw" else {}
    vs = [
        VariantSpec(
            f"cos{i}", optimizer=optimizer, schedule="cosine", learning_rate=lr, warmup_steps=3, decay_steps=12, **decay
        )
        for i, lr in enumerate((1e-2, 3e-3))
    ]
    snapshots = []
    full = run(vs, ds, settings, on_epoch=lambda e, row, snap: snapshots.append(snap()) if e == 0 else None).history
    run_plan = runplan.plan_run(plan(vs), ds, settings, jax.devices()[:1])
    if runplan.cpu_kernels_on(jax.devices()[:1]):
        assert all(b.execution.step.fused_update for b in run_plan.buckets), "the fused step is what resumes"
    checkpoint.save_checkpoint(tmp_path, snapshots[0])
    restored = checkpoint.load_checkpoint(tmp_path, run_plan)
    counts = [
        int(np.ravel(c)[0]) for c in jax.tree.leaves(restored.states[0].opt_state) if np.asarray(c).dtype == np.int32
    ]
    assert counts and all(c == 5 for c in counts), counts  # one epoch of 5 steps, mid-warmup-and-decay
    resumed = run(vs, ds, settings, resume=restored).history
    for key in full:
        for metric in full[key]:
            np.testing.assert_array_equal(resumed[key][metric], full[key][metric], err_msg=f"{key} {metric}")


def test_schedules_match_optax_schedules():
    """Each schedule in jnp, with its numbers traced, against optax's builder with the same numbers."""
    counts = jnp.arange(0, 30)
    cases = {
        "exponential": (dict(decay_rate=0.3, decay_steps=7.0), optax.exponential_decay(0.1, 7, 0.3)),
        "cosine": (
            dict(warmup_steps=5.0, decay_steps=20.0, alpha=0.2),
            optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 20, end_value=0.02),
        ),
        "piecewise": (
            dict(boundaries=(4, 10, 11), scales=(0.5, 2.0, 0.1)),
            optax.piecewise_constant_schedule(0.1, {4: 0.5, 10: 2.0, 11: 0.1}),
        ),
    }
    for kind, (numbers, reference) in cases.items():
        hp = Hyperparameters.create(learning_rate=0.1, **numbers)
        ours = jax.jit(jax.vmap(lambda hp, c: optim.learning_rate_schedule(kind, hp)(c), in_axes=(None, 0)))(hp, counts)
        np.testing.assert_allclose(ours, jax.vmap(reference)(counts), rtol=1e-6, atol=1e-9, err_msg=kind)


def test_hparams_and_axes_name_the_optimizer_and_schedule():
    from jaxreg import config, events, plots

    spec = VariantSpec(
        "v", optimizer="sgd", nesterov=True, momentum=0.9, schedule="piecewise", boundaries=(10, 20), scales=(0.5, 0.1)
    )
    h = events.hparams_of(spec.to_dict(), 0)
    assert (h["optimizer"], h["momentum"], h["nesterov"], h["schedule"], h["boundaries"], h["scales"]) == (
        "sgd",
        0.9,
        True,
        "piecewise",
        "10,20",
        "0.5,0.1",
    )
    assert len(events.header_records(h)) > 0
    older = {k: v for k, v in spec.to_dict().items() if k not in events.OPTIMIZER_HPARAM_FIELDS}  # a folder from before
    assert "schedule" not in events.hparams_of(older, 0)
    assert (
        {"learning_rate", "momentum", "b1", "b2", "eps", "warmup_steps"} <= set(config.AXES) <= set(plots.AXIS_LABELS)
    )


def test_adamw_vs_l2_preset_plans_two_programs():
    """5 learning rates x 5 strengths per side, plus plain Adam per rate, 3 seeds: 165 models in 2 programs."""
    from experiments import presets

    config = presets.load("adamw-vs-l2")
    buckets = plan(config.variant_specs())
    assert config.seeds == 3 and sum(len(b.configs) * len(b.seeds) for b in buckets) == 3 * (5 + 25 + 25)
    assert sorted((b.optimizer, len(b.configs)) for b in buckets) == [("adam", 30), ("adamw", 25)]
    adamw = [v for v in config.variants if v.optimizer == "adamw"]
    lams = {round(v.learning_rate * v.weight_decay, 12) for v in adamw}  # the paper's per-step decay
    assert len(lams) == 5 and len({v.learning_rate for v in adamw}) == 5


def test_memory_estimate_counts_adams_two_moments():
    ds = synthetic_dataset(n_train=N_TRAIN, n_validation=BATCH, num_words=NUM_WORDS, seed=0)
    settings = RunSettings(epochs=2, batch_size=BATCH)
    state = {}
    for optimizer in ("keras2", "adam"):
        run_plan = runplan.plan_run(
            plan([VariantSpec("v", optimizer=optimizer)]), ds, settings, jax.devices()[:1], estimate_memory=True
        )
        state[optimizer] = run_plan.memory.state
    assert state["adam"] > state["keras2"]
