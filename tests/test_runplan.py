"""The run plan (jaxreg.runplan): built once, read by training, config.json, the memory check and the
checkpoint; own models go through run_sweep like the study's MLP, resume included."""

from __future__ import annotations

import io
import math

import jax
import numpy as np
import pytest
from flax import linen as nn

from jaxreg import fileio, live, memory, runplan
from jaxreg.batches import SparseBatch
from jaxreg.data import synthetic_dataset
from jaxreg.dataset import from_arrays
from jaxreg.history import METRICS
from jaxreg.model import MLP, MultiHotDense, count_params, multi_hot_matmul
from jaxreg.params import load_params
from jaxreg.sweep import SweepConfig, SweepInterrupted, run_sweep
from jaxreg.variants import (
    RunSettings,
    VariantError,
    VariantSpec,
    plan,
    plan_run,
    run,
    with_seeds,
)


class TinyBag(nn.Module):
    """An own model: the mean embedding of a review's words, then one logit."""

    features: int = 4

    @nn.compact
    def __call__(self, x):
        summed = MultiHotDense(self.features, name="bag")(x)
        num_words = x.num_words if isinstance(x, SparseBatch) else x.shape[-1]
        counts = multi_hot_matmul(x, jax.numpy.ones((num_words, 1), summed.dtype))
        return nn.Dense(1, name="output")(nn.relu(summed / jax.numpy.maximum(counts, 1.0)))


OWN = SweepConfig(
    "own",
    (VariantSpec("bag", model=TinyBag(4)), VariantSpec("bag_l2", model=TinyBag(4), l2=1e-3), VariantSpec("mlp", (4,))),
    epochs=3,
    seeds=2,
    batch_size=256,
    synthetic=True,
)


def _sweep(out, **kwargs):
    return run_sweep(OWN, out, progress=False, figures=False, stream=io.StringIO(), **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "run"
    return out, _sweep(out)


def _tiny_bag_parameters(num_words: int, features: int = 4) -> int:
    return num_words * features + features + features * 1 + 1  # bag kernel and bias, output kernel and bias


def test_an_own_model_config_records_its_description():
    recorded = OWN.to_dict()["variants"]
    assert [v["model"] for v in recorded] == ["TinyBag(features=4)", "TinyBag(features=4)", None]
    assert recorded[2]["widths"] == [4] and recorded[0]["widths"] is None


def test_an_own_model_sweeps_end_to_end(uninterrupted):
    out, result = uninterrupted
    assert [s.name for s in result.summaries] == ["bag", "bag_l2", "mlp"]
    saved = fileio.read_json(out / fileio.CONFIG_FILE)
    own, mlp = sorted(saved["plan"], key=lambda b: b["widths"] is not None)
    assert own["model"] == "TinyBag(features=4)" and own["variants"] == ["bag", "bag_l2"] and own["widths"] is None
    assert own["parameters"] == _tiny_bag_parameters(1000)
    assert mlp["parameters"] == count_params((16,), 1000)  # padded to 16 units
    assert saved["variants"][0]["model"] == "TinyBag(features=4)"
    for name in ("bag", "bag_l2", "mlp"):
        h = result.histories[name]
        assert h["loss"].shape == (2, 3) and np.isfinite(h["loss"]).all()
    params = load_params(out, "bag", seed=1)
    assert params["params"]["bag"]["kernel"].shape == (1000, 4)


def test_an_own_model_sweep_resumes_to_the_uninterrupted_history(uninterrupted, tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) in epoch 2's history lines, so the checkpoint holds epoch 1; resumed, every
    history equals the uninterrupted run's bit for bit (the same compiled programs on the same machine)."""
    reference_folder, reference = uninterrupted
    append = live.LiveLog.epoch

    def epoch_then_interrupt(self, e, row):
        append(self, e, row)
        if e + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(live.LiveLog, "epoch", epoch_then_interrupt)
    out = tmp_path / "run"
    with pytest.raises(SweepInterrupted) as stopped:
        _sweep(out)
    assert stopped.value.epochs_done == 1
    monkeypatch.undo()
    resumed = _sweep(out, resume=True)
    assert resumed.resumed_from == 1
    for name, h in reference.histories.items():
        for column in METRICS:
            np.testing.assert_array_equal(resumed.histories[name][column], h[column], err_msg=f"{name} {column}")
    for seed in (0, 1):
        got, want = load_params(out, "bag", seed), load_params(reference_folder, "bag", seed)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_the_plan_counts_the_outputs_of_a_multiclass_task():
    rng = np.random.default_rng(0)
    dataset = from_arrays(rng.normal(size=(60, 7)).astype(np.float32), rng.integers(0, 5, 60), holdout=20)
    variants = [VariantSpec("a", (3,)), VariantSpec("own", model=MLP((3,), outputs=5))]
    run_plan = plan_run(plan(variants), dataset, RunSettings(epochs=1), jax.devices()[:1])
    assert run_plan.task.outputs == 5 and not run_plan.sparse
    mlp, own = run_plan.buckets
    init = MLP((16,), outputs=5).init(jax.random.key(0), np.zeros((1, 7), np.float32))
    assert mlp.parameters == count_params((16,), 7, 5) == sum(x.size for x in jax.tree.leaves(init))
    assert own.parameters == count_params((3,), 7, 5)
    assert [b.execution.step.task.outputs for b in run_plan.buckets] == [5, 5]
    assert mlp.cost == mlp.parameters and runplan.bucket_cost(mlp.bucket, 7, 5) == mlp.cost


def test_the_memory_estimate_reads_the_plans_parameters():
    dataset = synthetic_dataset(n_train=64, n_validation=16, num_words=200)
    variants = with_seeds([VariantSpec("own", model=TinyBag(4)), VariantSpec("mlp", (4,))], [0, 1])
    run_plan = plan_run(plan(variants), dataset, RunSettings(epochs=2), jax.devices()[:1], estimate_memory=True)
    own = run_plan.buckets[0]
    assert own.parameters == _tiny_bag_parameters(200) and own.memory_shape().parameters == own.parameters
    shapes = [b.memory_shape() for b in run_plan.buckets]
    data_free = memory.estimate(shapes, memory.DataShape(200, 64, 16, 512, 1024, 0, 0), 2)
    assert run_plan.memory.state == data_free.state  # the state is the plan's parameters x copies
    copies = [b.models * memory.STATE_COPIES + b.execution.n_configs for b in run_plan.buckets]
    assert data_free.state == sum(b.parameters * memory.FLOAT_BYTES * n for b, n in zip(run_plan.buckets, copies))
    assert math.isfinite(run_plan.memory.total) and run_plan.memory.total > 0


def test_run_refuses_a_plan_for_other_variants_or_settings():
    dataset = synthetic_dataset(n_train=64, n_validation=16, num_words=200)
    variants = [VariantSpec("a", (4,))]
    run_plan = plan_run(plan(variants), dataset, RunSettings(epochs=1), jax.devices()[:1])
    with pytest.raises(VariantError, match="another list of variants"):
        run([VariantSpec("b", (4,))], dataset, RunSettings(epochs=1), plan=run_plan)
    with pytest.raises(VariantError, match="other settings"):
        run(variants, dataset, RunSettings(epochs=2), plan=run_plan)
    result = run(variants, dataset, RunSettings(epochs=1), plan=run_plan)
    assert result.buckets[0]["variants"] == ["a"]
