"""Tests of jaxreg.variants: spec validation, padding policy and bucket planning, and the
invariants of training many variants as one vmapped program.

The invariants compare histories of `run` calls on one small synthetic dataset (1000 training
reviews in batches of 128, so 8 batches with a partial last one; 300 validation reviews in
batches of 128). On the CPU, on every instruction set (`.ci/run` reruns them with XLA held
to a lower one):
  bit for bit (the same compiled program, other inputs): resume == uninterrupted; a variant's
    history does not depend on the order of the variant list, nor on its neighbours'
    hyperparameters (a diverging neighbour included) when the bucket has the same shape.
  to float32 rounding (RTOL/ATOL; other compiled programs): vmap vs a loop of single runs, padded
    vs unpadded, a seed in a grid vs alone, a bucket of other size, and with variant_loop="map"
    a variant alone vs in a bucket (measured: bit for bit).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re

import chex
import jax
import numpy as np
import pytest

from jaxreg import variants
from jaxreg.data import synthetic_dataset
from jaxreg.tasks import Task
from jaxreg.variants import (
    METRICS,
    Bucket,
    BucketProgram,
    PaddingPolicy,
    RunSettings,
    VariantError,
    VariantSpec,
    choose_product,
    padded_widths,
    plan,
    run,
    sequential_on,
    with_seeds,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set

# Vmapped, padded or regrouped programs may sum in another order: float32 rounding only.
# Measured after these 3 epochs on AMD EPYC (Zen 3), with XLA on AVX2 and held to SSE4.2:
# at most 1.8e-7 relative, 1.2e-7 absolute; asserted with a margin.
RTOL, ATOL = 1e-6, 1e-7
SETTINGS = RunSettings(epochs=3, batch_size=128, eval_batch_size=128)
SEEDS = (0, 1, 2)

WIDE = VariantSpec("wide", (16, 16))
WIDE_L2 = VariantSpec("wide_l2", (16, 16), l2=1e-3)
WIDE_L2_MORE = VariantSpec("wide_l2_more", (16, 16), l2=1e-2)
WIDE_DROPOUT = VariantSpec("wide_dropout", (16, 16), dropout_rate=0.5)
WIDE_DECAY = VariantSpec("wide_decay", (16, 16), weight_decay=20.0)
WIDE_PROXIMAL = VariantSpec("wide_proximal", (16, 16), l1_proximal=10.0)
FROZEN = VariantSpec("frozen", (16, 16), learning_rate=1e-12)
NARROW = VariantSpec("narrow", (6, 6))
NARROW_DROPOUT = VariantSpec("narrow_dropout", (6, 6), dropout_rate=0.3)
NARROW_L1 = VariantSpec("narrow_l1", (6, 6), l1=1e-3)
SHALLOW = VariantSpec("shallow_keras3", (8,), optimizer="keras3")
DIVERGING = VariantSpec("diverging", (16, 16), learning_rate=1e20)
NEIGHBOURS = [WIDE, NARROW_L1]

REFERENCE_CONFIGS = [
    WIDE, WIDE_L2, WIDE_L2_MORE, WIDE_DROPOUT, WIDE_DECAY, WIDE_PROXIMAL, FROZEN,
    NARROW, NARROW_DROPOUT, NARROW_L1, SHALLOW,
]  # fmt: skip
SNAPSHOT_AFTER = 1  # epochs
NO_PADDING = PaddingPolicy(floor=1, powers_of_two=False)


def key(v: VariantSpec):
    return (v.name, v.seed)


def assert_close(actual, expected, keys):
    for k in keys:
        chex.assert_trees_all_close(actual[k], expected[k], rtol=RTOL, atol=ATOL, custom_message=str(k))


def assert_equal(actual, expected, keys):
    for k in keys:
        chex.assert_trees_all_equal(actual[k], expected[k], custom_message=str(k))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Compile identical bucket programs once: each run() builds new programs, and many runs here repeat shapes."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n_train=1000, n_validation=300, num_words=1000, seed=0)


@pytest.fixture(scope="module")
def reference(dataset):
    """One run of all reference configs x SEEDS (two buckets), recording traces, compiles and a snapshot."""
    traces: dict = {}
    compiles = []
    epoch_compiles = []
    snapshots = []

    def counting_train_epoch(*args, config, **kwargs):
        traces[config] = traces.get(config, 0) + 1
        return train_epoch(*args, config=config, **kwargs)

    def on_compile(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    def on_epoch(epoch, row, snapshot):
        epoch_compiles.append(len(compiles))
        if epoch + 1 == SNAPSHOT_AFTER:
            snapshots.append(snapshot())

    train_epoch = variants.train_epoch
    jax.monitoring.register_event_duration_secs_listener(on_compile)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(variants, "train_epoch", counting_train_epoch)
            vs = with_seeds(REFERENCE_CONFIGS, SEEDS)
            history = run(vs, dataset, SETTINGS, on_epoch=on_epoch).history
    finally:
        jax.monitoring.unregister_event_duration_listener(on_compile)
    return dict(variants=vs, history=history, traces=traces, epoch_compiles=epoch_compiles, snapshot=snapshots[0])


@pytest.fixture(scope="module")
def neighbours(dataset):
    """NEIGHBOURS next to DIVERGING, and next to the same config at a benign learning rate (same program)."""
    benign = dataclasses.replace(DIVERGING, learning_rate=1e-3)
    return dict(
        with_bad=run([*NEIGHBOURS, DIVERGING], dataset, SETTINGS).history,
        with_good=run([*NEIGHBOURS, benign], dataset, SETTINGS).history,
        benign=benign,
    )


@pytest.fixture(scope="module")
def alone(dataset):
    """run([v]) for one variant, memoized across the module's tests."""
    cache = {}

    def history(v: VariantSpec):
        if key(v) not in cache:
            cache[key(v)] = run([v], dataset, SETTINGS).history[key(v)]
        return cache[key(v)]

    return history


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value",
    [
        ("widths", (0, 16)),
        ("widths", (16, -3)),
        ("widths", ()),
        ("dropout_rate", -0.1),
        ("dropout_rate", 1.0),
        ("dropout_rate", 1.5),
        ("l1", -1e-3),
        ("l1", math.nan),
        ("l2", -1.0),
        ("l2", math.inf),
        ("weight_decay", -0.1),
        ("weight_decay", math.nan),
        ("l1_proximal", -1e-4),
        ("l1_proximal", -math.inf),
        ("learning_rate", 0.0),
        ("learning_rate", -1e-3),
        ("optimizer", "adagrad"),
        ("seed", -1),
        ("seed", True),
    ],
)
def test_spec_rejects_bad_field_naming_variant_field_and_value(field, value):
    with pytest.raises(VariantError, match=rf"'bad_one'.*{field}={re.escape(repr(value))}"):
        VariantSpec("bad_one", **{field: value})


def test_spec_rejects_empty_name():
    with pytest.raises(VariantError, match=r"name.*''"):
        VariantSpec("")


def test_from_dict_rejects_unknown_field_by_name():
    with pytest.raises(VariantError, match=r"'typo'.*unknown.*'dropuot_rate'"):
        VariantSpec.from_dict({"name": "typo", "dropuot_rate": 0.5})
    spec = VariantSpec.from_dict({"name": "ok", "widths": [4, 4], "l2": 1e-3})
    assert spec == VariantSpec("ok", (4, 4), l2=1e-3)


def test_spec_accepts_edges_and_normalizes_types():
    low = VariantSpec("edges", [np.int64(1)], dropout_rate=0, l1=0, seed=np.int32(0))
    assert low.widths == (1,) and type(low.widths[0]) is int and type(low.seed) is int
    assert (low.dropout_rate, low.l1) == (0.0, 0.0) and type(low.dropout_rate) is float and type(low.l1) is float
    high = VariantSpec("edges", (1024, 1024, 1024), dropout_rate=0.999, learning_rate=1e-12, optimizer="keras3", seed=7)
    assert (high.widths, high.dropout_rate, high.learning_rate, high.optimizer, high.seed) == (
        (1024, 1024, 1024), 0.999, 1e-12, "keras3", 7,
    )  # fmt: skip
    assert VariantSpec.from_dict(dataclasses.asdict(high)) == high


def test_plan_rejects_duplicate_name_and_seed():
    with pytest.raises(VariantError, match=r"'twice'.*seed 1"):
        plan([VariantSpec("twice", seed=1), VariantSpec("other"), VariantSpec("twice", seed=1)])


def test_plan_rejects_one_name_for_two_settings():
    with pytest.raises(VariantError, match=r"'same_name'.*two different settings"):
        plan([VariantSpec("same_name", l2=1e-3, seed=0), VariantSpec("same_name", l2=1e-2, seed=1)])


def test_with_seeds_is_every_variant_once_per_seed():
    vs = with_seeds([WIDE, NARROW], [3, 1])
    assert [key(v) for v in vs] == [("wide", 3), ("wide", 1), ("narrow", 3), ("narrow", 1)]
    assert all(dataclasses.replace(v, seed=0) in (WIDE, NARROW) for v in vs)


# ----------------------------------------------------------------------------- padding policy, planning


def test_padding_policy_width_depends_on_the_width_alone():
    policy = PaddingPolicy()
    assert [policy.width(w) for w in (1, 6, 16, 17, 100, 128, 129, 512, 1000, 1024)] == [
        16, 16, 16, 32, 128, 128, 256, 512, 1024, 1024,
    ]  # fmt: skip
    assert all(w <= policy.width(w) < 2 * w for w in range(17, 3000)), "less than twice the width above the floor"
    assert policy.widths((6, 1)) == (16, 16) and policy.widths((100, 6, 17)) == (128, 16, 32)
    assert PaddingPolicy(floor=1, powers_of_two=False).widths((6, 100)) == (6, 100), "padding off"
    # the same widths whatever the other variants of the plan
    alone = padded_widths([(6, 6)])
    assert alone[(6, 6)] == padded_widths([(6, 6), (16, 16), (1024, 1024)])[(6, 6)] == (16, 16)


def test_narrow_widths_share_a_bucket():
    assignment = padded_widths([(6, 6), (1, 1), (16, 16)])
    assert assignment == {(16, 16): (16, 16), (6, 6): (16, 16), (1, 1): (16, 16)}
    buckets = plan([VariantSpec("a", (6,)), VariantSpec("b", (1,)), VariantSpec("c", (16,))])
    assert [(b.widths, [c.name for c in b.configs]) for b in buckets] == [((16,), ["a", "b", "c"])]


def test_wide_widths_are_not_padded_into_each_other():
    assert padded_widths([(16,), (1024,)]) == {(1024,): (1024,), (16,): (16,)}
    assert padded_widths([(512,), (1024,)]) == {(1024,): (1024,), (512,): (512,)}
    assert padded_widths([(500, 600), (1024, 1024)]) == {(1024, 1024): (1024, 1024), (500, 600): (512, 1024)}


def test_different_depths_never_share():
    vs = [
        VariantSpec("one", (16,)),
        VariantSpec("two", (16, 16)),
        VariantSpec("three", (16, 16, 16)),
        VariantSpec("small", (1, 1)),
    ]
    buckets = plan(vs)
    assert sorted((b.widths, tuple(c.name for c in b.configs)) for b in buckets) == [
        ((16,), ("one",)),
        ((16, 16), ("two", "small")),
        ((16, 16, 16), ("three",)),
    ]


def test_capacity_grid_buckets():
    grid = [(2**k, 2**k) for k in range(11)]  # 1, 2, 4, ..., 1024
    expected = {1024: 1024, 512: 512, 256: 256, 128: 128, 64: 64, 32: 32, 16: 16, 8: 16, 4: 16, 2: 16, 1: 16}
    assert padded_widths(grid) == {(w, w): (b, b) for w, b in expected.items()}
    buckets = plan([VariantSpec(f"w{w}", (w, w)) for w, _ in grid])
    assert sorted((b.widths[0], sorted(c.widths[0] for c in b.configs)) for b in buckets) == [
        (16, [1, 2, 4, 8, 16]), (32, [32]), (64, [64]), (128, [128]), (256, [256]), (512, [512]), (1024, [1024]),
    ]  # fmt: skip


def test_plan_builds_full_grids():
    configs = [WIDE, NARROW_DROPOUT, WIDE_L2]
    buckets = plan(with_seeds(configs, [2, 0, 1]))
    assert len(buckets) == 1
    (bucket,) = buckets
    assert bucket.widths == (16, 16) and bucket.optimizer == "keras2"
    assert bucket.configs == tuple(configs) and bucket.seeds == (0, 1, 2)
    assert [key(v) for v in bucket.variants] == [(c.name, s) for s in (0, 1, 2) for c in configs]

    cfg = bucket.step_config(Task(), "sparse")
    assert (cfg.widths, cfg.use_penalty, cfg.use_dropout, cfg.use_weight_decay, cfg.use_l1_proximal) == (
        (16, 16), True, True, False, False,
    )  # fmt: skip
    # with the CPU kernels the first layer's update is fused, where the optimizer allows it
    assert not cfg.fused_update and bucket.step_config(Task(), "sparse", cpu_kernels=True).fused_update
    (decayed,) = plan([dataclasses.replace(WIDE, name="decayed", weight_decay=1e-3)])
    assert not decayed.step_config(Task(), "sparse", cpu_kernels=True).fused_update


def test_plan_keeps_decoupled_stages_apart():
    """Decay or proximal L1 keep a bucket off the fused step: such variants never share a bucket with
    others, so a variant's update path (and its bits) never depends on its neighbours."""
    buckets = plan([WIDE, WIDE_DECAY, WIDE_L2, WIDE_PROXIMAL, NARROW])
    grids = sorted((tuple(c.name for c in b.configs), b.widths) for b in buckets)
    assert grids == [(("wide", "wide_l2", "narrow"), (16, 16)), (("wide_decay", "wide_proximal"), (16, 16))]
    fused = {
        tuple(c.name for c in b.configs): b.step_config(Task(), "sparse", cpu_kernels=True).fused_update
        for b in buckets
    }
    assert fused == {("wide", "wide_l2", "narrow"): True, ("wide_decay", "wide_proximal"): False}


def test_plan_splits_other_seed_sets_and_optimizers():
    vs = [
        *with_seeds([WIDE], [0, 1]),
        *with_seeds([WIDE_L2], [0]),
        *with_seeds([SHALLOW, VariantSpec("k2", (8,))], [0, 1]),
    ]
    grids = sorted((b.widths, b.optimizer, tuple(c.name for c in b.configs), b.seeds) for b in plan(vs))
    assert grids == [
        ((16,), "keras2", ("k2",), (0, 1)),
        ((16,), "keras3", ("shallow_keras3",), (0, 1)),
        ((16, 16), "keras2", ("wide",), (0, 1)),
        ((16, 16), "keras2", ("wide_l2",), (0,)),
    ]


def test_choose_product():
    def bucket(n_configs, width):
        return Bucket((width, 4), "keras2", tuple(VariantSpec(f"c{i}", (width, 4)) for i in range(n_configs)), (0,))

    assert choose_product(bucket(1, 16)) == "sparse"
    assert choose_product(bucket(16, 16)) == "sparse"  # 256 columns: not above the threshold
    assert choose_product(bucket(17, 16)) == "dense"
    assert choose_product(bucket(1, 512)) == "dense"
    assert choose_product(bucket(1, 16), "dense") == "dense"
    assert choose_product(bucket(1, 512), "sparse") == "sparse"
    # variants one after the other (one CPU device): only one config's columns at a time
    assert choose_product(bucket(32, 16), sequential=True) == "sparse"
    assert choose_product(bucket(1, 512), sequential=True) == "dense"
    # with the CPU kernels the sparse product wins at every width
    assert choose_product(bucket(4, 1024), cpu_kernels=True) == "sparse"
    assert choose_product(bucket(4, 1024), "dense", cpu_kernels=True) == "dense"


def test_variant_loop():
    cpu = jax.devices("cpu")[:1]
    assert sequential_on(cpu, "map") and not sequential_on(cpu, "vmap")
    assert sequential_on(cpu, "auto") == (not variants.cpu_kernels_on(cpu))
    wide = Bucket((1024, 4), "keras2", (VariantSpec("w", (1024, 4)),), (0,))

    def run(product, loop):
        e = variants.execution(wide, RunSettings(product=product, variant_loop=loop), cpu)
        return e.product, e.sequential

    assert run("dense", "map") == ("dense", True)  # "map" loops whatever the product
    assert run("dense", "auto") == ("dense", False)  # auto never loops a dense product
    assert run("sparse", "vmap") == ("sparse", False)


def test_execution_is_decided_once_and_reported():
    """One Execution per bucket: the step config training compiles, the loop, the kernels, the padded configs."""
    cpu = jax.devices("cpu")[:1]
    bucket = plan([WIDE, WIDE_L2, NARROW])[0]
    e = variants.execution(bucket, RunSettings(), cpu)
    kernels = variants.cpu_kernels_on(cpu)
    assert e.step == bucket.step_config(Task(), "sparse", kernels) and e.n_configs == 3
    assert e.describe() == {"model": "MLP(16, 16)", "task": {"kind": "binary", "loss": "keras", "num_classes": None},
                            "product": "sparse", "variant_loop": "map" if e.sequential else "vmap",
                            "cpu_kernels": kernels, "fused_update": kernels}  # fmt: skip
    program = BucketProgram(
        bucket, synthetic_dataset(n_train=64, n_validation=16, num_words=200), RunSettings(epochs=1)
    )
    assert program.execution == e and program.config == e.step
    with pytest.raises(ValueError, match="variant_loop"):
        RunSettings(variant_loop="loop")


def test_run_settings_validation():
    for field in ("epochs", "batch_size", "eval_batch_size"):
        with pytest.raises(ValueError, match=field):
            RunSettings(**{field: 0})


# ----------------------------------------------------------------------------- invariants of run()


def test_history_shapes_and_finiteness(reference):
    history = reference["history"]
    assert set(history) == {key(v) for v in reference["variants"]}
    for k, h in history.items():
        assert set(h) == set(METRICS), k
        chex.assert_shape(list(h.values()), (SETTINGS.epochs,))
        chex.assert_tree_all_finite(h)


@pytest.mark.parametrize("v", [WIDE, SHALLOW], ids=lambda v: v.name)
def test_vmap_equals_loop_of_single_runs(reference, alone, v):
    assert_close(reference["history"], {key(v): alone(v)}, [key(v)])


@pytest.mark.parametrize("v", [NARROW, NARROW_DROPOUT, NARROW_L1], ids=lambda v: v.name)
def test_padded_equals_unpadded(dataset, reference, v):
    """(6, 6) variants trained inside the (16, 16) bucket match the unpadded (6, 6) program."""
    assert plan([v])[0].widths == (16, 16) and plan([v], NO_PADDING)[0].widths == (6, 6)
    unpadded = run([v], dataset, SETTINGS, policy=NO_PADDING).history
    assert_close(reference["history"], unpadded, [key(v)])


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_in_grid_equals_seed_alone(reference, alone, seed):
    v = dataclasses.replace(NARROW_DROPOUT, seed=seed)
    assert_close(reference["history"], {key(v): alone(v)}, [key(v)])


def test_seeds_give_different_histories(reference):
    history = reference["history"]
    for config in (WIDE, NARROW_DROPOUT):
        losses = [history[(config.name, s)]["loss"] for s in SEEDS]
        for i in range(len(SEEDS)):
            for j in range(i):
                assert not np.allclose(losses[i], losses[j], rtol=1e-3), (config.name, SEEDS[i], SEEDS[j])


def test_same_seed_sees_the_same_batches(dataset):
    """Buckets that share a seed get identical batches for it (a paired comparison); other seeds differ."""
    first = BucketProgram(plan(with_seeds([WIDE], [0, 1]))[0], dataset, SETTINGS)
    second = BucketProgram(plan(with_seeds([NARROW_L1, SHALLOW], [1, 2]))[0], dataset, SETTINGS)
    for epoch in range(SETTINGS.epochs):
        a, b = first.train_batches(epoch), second.train_batches(epoch)
        # Capacities (padding pairs) may differ between buckets; the multi-hot content may not.
        chex.assert_trees_all_equal((a.x.dense()[1], a.y[1], a.weight[1]), (b.x.dense()[0], b.y[0], b.weight[0]))
        assert not np.array_equal(a.y[0], a.y[1]) and not np.array_equal(b.y[0], b.y[1])
    assert not np.array_equal(first.train_batches(0).y[0], first.train_batches(1).y[0]), "reshuffled each epoch"


def test_other_neighbours_do_not_change_a_history(reference, neighbours):
    """A 3-config, 1-seed bucket vs the 10-config, 3-seed reference bucket."""
    keys = [key(v) for v in NEIGHBOURS]
    assert_close(neighbours["with_good"], reference["history"], keys)


def test_order_of_the_variant_list_is_bit_exact(dataset, reference):
    """Shuffled variant list: other config and seed order inside the same buckets.

    Bit for bit on the CPU; on a GPU, XLA's batched kernels may round a variant differently at
    another position (seen on an H200: 8e-7 relative in one validation loss), so there to round-off.
    """
    vs = list(reference["variants"])
    random.Random(0).shuffle(vs)
    assert [b.configs for b in plan(vs)] != [b.configs for b in plan(reference["variants"])]
    compare = assert_equal if jax.default_backend() == "cpu" else assert_close
    compare(run(vs, dataset, SETTINGS).history, reference["history"], list(reference["history"]))


def test_one_trace_and_no_compile_after_the_first_epoch(reference):
    """Three buckets of different configs and hyperparameter values: each traces its epoch once for all epochs."""
    buckets = plan(reference["variants"])
    assert len(buckets) == 3
    assert len({b.configs for b in buckets}) == 3
    assert sorted(reference["traces"].values()) == [1, 1, 1]
    assert sorted(cfg.widths for cfg in reference["traces"]) == [(16,), (16, 16), (16, 16)]
    first, *later = reference["epoch_compiles"]
    assert first > 0 and all(n == first for n in later), reference["epoch_compiles"]


def test_resume_equals_uninterrupted(dataset, reference):
    snap = reference["snapshot"]
    assert snap.epochs_done == SNAPSHOT_AFTER
    assert all(len(h["loss"]) == SNAPSHOT_AFTER for h in snap.history.values())
    seen = []
    resumed = run(
        reference["variants"], dataset, SETTINGS, resume=snap, on_epoch=lambda e, row, s: seen.append(e)
    ).history
    assert seen == list(range(SNAPSHOT_AFTER, SETTINGS.epochs))
    assert_equal(resumed, reference["history"], list(reference["history"]))


def test_resume_with_reordered_variants_is_refused(dataset, reference):
    """Same buckets in the same order, other config order inside the (16, 16) bucket: refused, never mixed up."""
    wide = [v for v in reference["variants"] if v.widths != SHALLOW.widths]
    vs = wide[::-1] + [v for v in reference["variants"] if v.widths == SHALLOW.widths]
    assert [b.widths for b in plan(vs)] == [b.widths for b in plan(reference["variants"])]
    with pytest.raises(VariantError, match="different list of variants"):
        run(vs, dataset, SETTINGS, resume=reference["snapshot"])


def test_per_variant_hyperparameters_take_effect(reference):
    h = reference["history"]
    for s in SEEDS:
        wide, l2, l2_more = h[("wide", s)], h[("wide_l2", s)], h[("wide_l2_more", s)]
        assert np.all(wide["penalty"] == 0) and np.all(wide["val_penalty"] == 0)
        assert np.all(l2["penalty"] > 0) and np.all(l2_more["penalty"] > l2["penalty"])
        assert np.all(l2_more["val_penalty"] > l2["val_penalty"])
        assert np.all(h[("narrow_l1", s)]["penalty"] > 0)
        assert np.all(h[("wide_decay", s)]["penalty"] == 0), "decoupled decay is not a loss penalty"
        assert np.all(np.abs(h[("wide_dropout", s)]["loss"] - wide["loss"]) > 1e-3)
        frozen = h[("frozen", s)]
        assert np.ptp(frozen["val_loss"]) < 1e-5 and np.ptp(wide["val_loss"]) > 1e-2
        assert wide["val_loss"][-1] < frozen["val_loss"][-1]


def test_weight_decay_and_proximal_l1_act_on_the_weights(reference):
    """From the snapshot state: decay shrinks the hidden kernels, proximal L1 makes exact zeros."""
    buckets = plan(reference["variants"])

    def hidden_kernel(name):  # [seeds, 16, 16]
        i, bucket = next((i, b) for i, b in enumerate(buckets) if name in [c.name for c in b.configs])
        kernel = np.asarray(reference["snapshot"].states[i].params["params"]["hidden_1"]["kernel"])
        chex.assert_shape(kernel, (len(SEEDS), len(bucket.configs), 16, 16))
        return kernel[:, [c.name for c in bucket.configs].index(name)]

    wide, decay, prox = (hidden_kernel(n) for n in ("wide", "wide_decay", "wide_proximal"))
    assert np.all(np.linalg.norm(decay, axis=(1, 2)) < 0.9 * np.linalg.norm(wide, axis=(1, 2)))
    assert np.all(np.mean(prox == 0, axis=(1, 2)) > 0.05) and np.all(wide != 0)
    narrow = hidden_kernel("narrow")
    assert np.all(narrow[:, 6:, :] == 0) and np.all(narrow[:, :, 6:] == 0), "padding stays exactly zero"


def test_divergence_is_contained(neighbours, alone):
    """A diverging variant goes nan; its neighbours match a benign neighbour (bit-for-bit) and running alone."""
    with_bad, with_good = neighbours["with_bad"], neighbours["with_good"]
    assert not np.all(np.isfinite(with_bad[key(DIVERGING)]["loss"]))
    assert not np.all(np.isfinite(with_bad[key(DIVERGING)]["val_loss"]))
    chex.assert_tree_all_finite(with_good[key(neighbours["benign"])])
    keys = [key(v) for v in NEIGHBOURS]
    assert_equal(with_bad, with_good, keys)
    assert_close(with_bad, {key(v): alone(v) for v in NEIGHBOURS}, keys)


def test_with_variant_loop_map_a_variant_alone_equals_it_in_a_bucket(dataset):
    """variant_loop="map" on one device: variants run one after the other (lax.map), so as alone.

    Every metric, for a narrow variant (padded to the same width alone and in the bucket) and a
    full-width one, next to neighbours of other widths, penalties, seeds and with the stages
    (decay, proximal L1) that keep their own bucket off the fused step. To RTOL/ATOL, not bit for
    bit: a bucket of one and a bucket of six are two compiled programs (the loop's body is the
    same computation, but XLA may compile it differently inside each); measured bit for bit on
    AVX2 and AVX-512.
    """
    if jax.default_backend() != "cpu":
        pytest.skip("a CPU claim: on a GPU, XLA's kernels may round a variant differently in another program")
    settings = dataclasses.replace(SETTINGS, variant_loop="map")
    target = VariantSpec("target", (6, 6), l1=1e-4, dropout_rate=0.3, seed=1)
    unpadded = VariantSpec("unpadded", (16, 16), l1=1e-4, l2=1e-3, seed=1)
    neighbours = [
        VariantSpec("n1", (16, 16), l2=1e-3, seed=1),
        VariantSpec("n2", (16, 16), seed=0),
        VariantSpec("decay", (16, 16), weight_decay=1e-2, seed=1),  # stages that keep a bucket off the fused step
        VariantSpec("proximal", (6, 6), l1_proximal=1e-3, seed=1),
        target,
        unpadded,
    ]
    together_all = run(neighbours, dataset, settings).history
    together = together_all[("target", 1)]
    alone = run([target], dataset, settings).history[("target", 1)]
    assert set(alone) == set(METRICS)
    assert_close({"t": alone}, {"t": together}, ["t"])
    unpadded_alone = run([unpadded], dataset, settings).history[("unpadded", 1)]
    assert_close({"u": unpadded_alone}, {"u": together_all[("unpadded", 1)]}, ["u"])
    # vmapped: the target's own bucket is the program that trains it (other buckets are other programs)
    (bucket,) = [b for b in plan(neighbours) if target in b.variants]
    assert len(bucket.configs) > 1
    vmapped = run(list(bucket.variants), dataset, dataclasses.replace(SETTINGS, variant_loop="vmap")).history[
        ("target", 1)
    ]
    assert_close({"t": vmapped}, {"t": together}, ["t"])
