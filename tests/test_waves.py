"""Waves: a run whose memory estimate does not fit (the devices' free memory, or --memory-limit) trains in
waves of buckets, seeds and configs that do, one after the other (runplan.in_waves, variants.run); --plan."""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import load_script
from jaxreg import checkpoint, cpu_kernels, fileio, live, memory, runplan, sweep
from jaxreg import variants as V
from jaxreg.data import synthetic_dataset
from jaxreg.params import load_params
from jaxreg.runplan import DoesNotFit, in_waves, wave_estimate
from jaxreg.sweep import LIMIT_SHARE, SYNTHETIC, SweepConfig, SweepInterrupted, plan_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
# two buckets: (16, 16) x 2 configs and (64,) x 2 configs, 3 seeds each
SPECS = V.with_seeds(
    [
        V.VariantSpec("a", (16, 16)),
        V.VariantSpec("b", (16, 16), l2=1e-3),
        V.VariantSpec("c", (64,)),
        V.VariantSpec("d", (64,), dropout_rate=0.3),
    ],
    [0, 1, 2],
)
TOLERANCE = dict(rtol=1e-6, atol=1e-7)  # a variant next to other neighbours (docs/reproducibility.md)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n_train=300, n_validation=200, num_words=300, n_signal_words=20, seed=0)


def _settings(loop="auto", patience=None):
    return V.RunSettings(epochs=3, batch_size=64, variant_loop=loop, patience=patience)


def _plan(dataset, settings):
    return V.plan_run(V.plan(SPECS), dataset, settings, jax.devices()[:1], "shard", estimate_memory=True)


def _budget(run_plan, dataset, seeds=2) -> int:
    """Room for every bucket's first `seeds` seeds, not for its 3: buckets are split by seeds."""
    return max(
        wave_estimate(run_plan, dataset, [(i, b.bucket.configs, b.bucket.seeds[:seeds])]).total
        for i, b in enumerate(run_plan.buckets)
    )


def _shapes(run_plan):
    return [
        [(b.bucket.widths, [c.name for c in b.bucket.configs], b.bucket.seeds) for b in w.buckets]
        for w in run_plan.waves
    ]


def _wave_keys(run_plan):
    return sorted((v.name, v.seed) for w in run_plan.waves for b in w.buckets for v in b.bucket.variants)


# --- the plan's waves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size", [("4GB", 4 * 10**9), ("4096MB", 4096 * 10**6), ("1.5 GiB", 3 * 2**29), ("1234", 1234)]
)
def test_sizes_parse_in_decimal_and_binary_units(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4XB", "GB", "-1GB", "4 G B", "1e9"])
def test_a_bad_size_is_one_line_naming_the_forms(text):
    with pytest.raises(ValueError, match="4GB, 4096MB") as raised:
        memory.parse_size(text)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="more than 0 bytes"):
        memory.parse_size("0")


def test_a_plan_that_fits_stays_one_wave(dataset):
    run_plan = _plan(dataset, _settings())
    same = in_waves(run_plan, dataset, run_plan.memory.total)
    assert same.split == () and len(same.waves) == 1 and same.waves[0].buckets == run_plan.buckets


def test_buckets_stay_whole_where_they_fit_then_split_by_seeds(dataset):
    run_plan = _plan(dataset, _settings())
    budget = _budget(run_plan, dataset)
    split = in_waves(run_plan, dataset, budget)
    assert len(split.waves) >= 2
    assert _wave_keys(split) == sorted(run_plan.keys)  # every variant and seed once
    assert all(w.memory.total <= budget for w in split.waves)
    whole = {b.bucket.widths: b for b in run_plan.buckets}
    pieces = [p for w in split.waves for p in w.buckets]
    assert any(p.bucket.seeds != whole[p.bucket.widths].bucket.seeds for p in pieces), "some bucket split by seeds"
    for p in pieces:  # each piece runs as its whole bucket runs, whatever its neighbours
        assert p.bucket.configs == whole[p.bucket.widths].bucket.configs
        assert p.execution.step == whole[p.bucket.widths].execution.step
        assert p.execution.sequential == whole[p.bucket.widths].execution.sequential
    assert split.peak_memory.total <= budget < run_plan.memory.total


def test_one_seed_too_big_splits_the_configs(dataset):
    run_plan = _plan(dataset, _settings())
    ones = [
        wave_estimate(run_plan, dataset, [(i, b.bucket.configs[:1], b.bucket.seeds[:1])]).total
        for i, b in enumerate(run_plan.buckets)
    ]
    largest = run_plan.buckets[int(np.argmax(ones))].bucket.widths
    split = in_waves(run_plan, dataset, max(ones))
    assert _wave_keys(split) == sorted(run_plan.keys)
    pieces = [p.bucket for w in split.waves for p in w.buckets if p.bucket.widths == largest]
    assert len(pieces) == 6 and all(len(p.seeds) == len(p.configs) == 1 for p in pieces)  # 3 seeds x 2 configs


def test_with_patience_a_variants_seeds_stay_in_one_wave(dataset):
    """Early stopping is per wave; a variant's seeds stopping together keeps its history one length."""
    run_plan = _plan(dataset, _settings(patience=2))
    all_seeds = max(
        wave_estimate(run_plan, dataset, [(i, b.bucket.configs[:1], b.bucket.seeds)]).total
        for i, b in enumerate(run_plan.buckets)
    )
    split = in_waves(run_plan, dataset, all_seeds)
    assert len(split.waves) >= 2
    assert all(p.bucket.seeds == (0, 1, 2) for w in split.waves for p in w.buckets)


def test_a_model_that_cannot_fit_is_one_line(dataset):
    run_plan = _plan(dataset, _settings())
    with pytest.raises(DoesNotFit, match=r"^one model alone needs an estimated .* GB, more than the 0.0 GB") as raised:
        in_waves(run_plan, dataset, 10**6)
    assert "\n" not in str(raised.value) and raised.value.estimate.total > 10**6


def test_resplit_rebuilds_the_described_waves(dataset):
    run_plan = _plan(dataset, _settings())
    split = in_waves(run_plan, dataset, _budget(run_plan, dataset))
    again = runplan.resplit(run_plan, dataset, split.describe_waves())
    assert _shapes(again) == _shapes(split) and again.describe_waves() == split.describe_waves()
    assert runplan.resplit(split, dataset, None).split == ()
    with pytest.raises(V.VariantError, match="other variants or seeds"):
        runplan.resplit(run_plan, dataset, split.describe_waves()[:1])


# --- training in waves -------------------------------------------------------------------------


def _assert_close(got: dict, want: dict, exact: bool = False):
    assert sorted(got) == sorted(want)
    for key in want:
        for column, values in want[key].items():
            if exact:
                np.testing.assert_array_equal(got[key][column], values, err_msg=f"{key} {column}")
            else:
                np.testing.assert_allclose(got[key][column], values, **TOLERANCE, err_msg=f"{key} {column}")


@pytest.mark.numerics
@pytest.mark.parametrize("loop", ["map", "vmap"])
def test_waves_train_as_the_unsplit_run(dataset, loop):
    """Each variant's history and parameters in waves equal the unsplit run's to the tolerance of a variant next
    to other neighbours (its piece of a bucket is another compiled program; with map measured bit for bit)."""
    settings = _settings(loop)
    run_plan = _plan(dataset, settings)
    split = in_waves(run_plan, dataset, _budget(run_plan, dataset))
    whole = V.run(SPECS, dataset, settings, plan=run_plan)
    waves, handed = [], {}
    got = V.run(
        SPECS, dataset, settings, plan=split, on_wave=lambda i, n: waves.append((i, n)), on_params=handed.update
    )
    assert waves == [(i, len(split.waves)) for i in range(len(split.waves))] and len(waves) >= 2
    assert got.params == {} and sorted(handed) == sorted(whole.params)  # handed over as each wave ended
    _assert_close(got.history, whole.history)
    for key, trained in whole.params.items():
        assert handed[key].best_epoch == trained.best_epoch
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOLERANCE), handed[key].final, trained.final)


def test_resume_in_the_middle_of_wave_two_continues_bit_for_bit(dataset, tmp_path):
    """A snapshot taken after wave 2's first epoch, through the checkpoint and back, resumes to the
    uninterrupted run in waves bit for bit (the same compiled programs, a resume)."""
    settings = _settings("vmap")
    run_plan = _plan(dataset, settings)
    split = in_waves(run_plan, dataset, _budget(run_plan, dataset))
    in_wave, taken = [], []

    def take(epoch, row, snapshot):
        if in_wave[-1] == 1 and epoch == 0:
            taken.append(snapshot())
            assert sorted(row) == sorted((v.name, v.seed) for b in split.waves[1].buckets for v in b.bucket.variants)

    uninterrupted = V.run(SPECS, dataset, settings, plan=split, on_epoch=take, on_wave=lambda i, n: in_wave.append(i))
    (snapshot,) = taken
    assert snapshot.wave == 1 and snapshot.epochs_done == 1 and len(snapshot.states) == len(split.waves[1].buckets)
    first = {(v.name, v.seed) for b in split.waves[0].buckets for v in b.bucket.variants}
    assert all(
        len(h["loss"]) == (3 if key in first else 1 if len(h["loss"]) else 0) for key, h in snapshot.history.items()
    )
    assert checkpoint.save_checkpoint(tmp_path, snapshot)  # an orbax step, saved and waited for
    assert checkpoint.latest_step(tmp_path) == checkpoint.WAVE_STEPS + 1  # wave 2, epoch 1: after wave 1's steps
    loaded = checkpoint.load_checkpoint(tmp_path, split)
    assert loaded.wave == 1 and V._as_tuples(loaded.waves) == V._as_tuples(split.wave_layout())
    resumed_waves, epochs = [], []
    resumed = V.run(
        SPECS,
        dataset,
        settings,
        plan=split,
        resume=loaded,
        on_wave=lambda i, n: resumed_waves.append(i),
        on_epoch=lambda e, row, s: epochs.append(e),
    )
    assert resumed_waves == list(range(1, len(split.waves)))
    assert epochs[:2] == [1, 2]  # wave 2 goes on after its first epoch
    _assert_close(resumed.history, {k: dict(h) for k, h in uninterrupted.history.items()}, exact=True)
    for key in resumed.params:  # the waves it trained
        jax.tree.map(np.testing.assert_array_equal, resumed.params[key].final, uninterrupted.params[key].final)


def test_a_snapshot_of_other_waves_is_refused(dataset):
    settings = _settings("vmap")
    run_plan = _plan(dataset, settings)
    split = in_waves(run_plan, dataset, _budget(run_plan, dataset))
    taken = []
    V.run(SPECS, dataset, settings, plan=split, on_epoch=lambda e, row, s: taken.append(s()) if not taken else None)
    with pytest.raises(V.VariantError, match="other waves"):
        V.run(SPECS, dataset, settings, plan=run_plan, resume=taken[0])


# --- run_sweep and the command line ------------------------------------------------------------------

CONFIG = SweepConfig(
    "waves",
    (V.VariantSpec("a", (16, 16)), V.VariantSpec("b", (16, 16), l2=1e-3), V.VariantSpec("c", (64,))),
    epochs=3,
    seeds=3,
    batch_size=256,
    synthetic=True,
)


def _sweep(out, **kwargs):
    return run_sweep(CONFIG, out, progress=False, figures=False, tensorboard=False, **kwargs)


def _limit(monkeypatch) -> int:
    """A --memory-limit that splits CONFIG by seeds, with this process's own memory taken as 0 (it varies in a test run)."""
    monkeypatch.setattr(memory, "process_rss", lambda: 0)
    planned = plan_sweep(CONFIG, stream=io.StringIO())
    dataset = synthetic_dataset(**SYNTHETIC)
    return math.ceil(_budget(planned, dataset) / LIMIT_SHARE)  # waves may fill LIMIT_SHARE of a limit


def test_a_sweep_under_a_memory_limit_runs_in_waves_and_resumes_in_wave_two(tmp_path, monkeypatch):
    limit = _limit(monkeypatch)
    stream = io.StringIO()
    reference = _sweep(tmp_path / "whole", memory_limit=limit, stream=stream)
    line = next(t for t in stream.getvalue().splitlines() if t.startswith("waves:"))
    saved = fileio.read_json(tmp_path / "whole" / fileio.CONFIG_FILE)["waves"]
    assert len(saved) >= 2 and f"in {len(saved)} waves to fit --memory-limit" in line, line
    assert f"wave 2/{len(saved)}: " in stream.getvalue()  # each wave announces itself
    wave_one = sum(len(p["variants"]) * len(p["seeds"]) for p in saved[0]["pieces"])
    append, calls = live.LiveLog.epoch, []

    def epoch_then_interrupt(self, e, row):  # wave 2's second epoch: the checkpoint holds its first
        append(self, e, row)
        calls.append(len(row))
        if len(calls) == CONFIG.epochs + 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(live.LiveLog, "epoch", epoch_then_interrupt)
    out = tmp_path / "run"
    with pytest.raises(SweepInterrupted) as stopped:
        _sweep(out, memory_limit=limit, stream=io.StringIO())
    assert stopped.value.epochs_done == 1 and calls[0] == wave_one
    written = [(n, s) for p in saved[0]["pieces"] for n in p["variants"] for s in p["seeds"]]
    assert all(load_params(out, n, s) for n, s in written)  # wave 1's parameters, written as it ended
    monkeypatch.setattr(live.LiveLog, "epoch", append)
    stream = io.StringIO()
    resumed = _sweep(out, resume=True, stream=stream)  # without the limit: the run keeps its waves
    assert f"keeps the {len(saved)} wave(s)" in stream.getvalue()
    assert resumed.resumed_from == 1
    for name, h in reference.histories.items():
        for column in ("loss", "val_loss", "val_accuracy"):
            np.testing.assert_array_equal(resumed.histories[name][column], h[column], err_msg=f"{name} {column}")
    assert (out / fileio.HISTORY_JSONL).read_bytes() == (tmp_path / "whole" / fileio.HISTORY_JSONL).read_bytes()
    for name in ("a", "c"):
        for seed in range(CONFIG.seeds):
            got, want = load_params(out, name, seed), load_params(tmp_path / "whole", name, seed)
            jax.tree.map(np.testing.assert_array_equal, got, want)


def test_the_progress_bar_names_the_wave(capsys):
    bar = sweep._Progress(CONFIG, 0, {}, True, (0, 3))
    bar.wave(1, 3)
    bar.epoch_done(0, {})
    bar.close()
    err = capsys.readouterr().err
    assert "waves wave 2/3" in err and "/9" in err  # 3 waves of 3 epochs


def _load_cli():
    return load_script(SWEEP, "sweep_cli_waves")


def test_plan_prints_the_waves_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.setattr(V.BucketProgram, "__init__", lambda *a, **k: pytest.fail("--plan built a program"))
    monkeypatch.setattr(memory, "process_rss", lambda: 2 * 10**8)  # as a fresh process (a test run's has grown)
    code = _load_cli().main(["--synthetic", "--seeds", "3", "--plan", "--memory-limit", "800MB"])
    out = capsys.readouterr().out
    assert code == 0
    assert "waves to fit --memory-limit 0.8 GB" in out and "wave 1/" in out and "nothing was compiled" in out
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no LATEST


def test_a_bad_memory_limit_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = _load_cli().main(["--synthetic", "--memory-limit", "lots"])
    err = [t for t in capsys.readouterr().err.splitlines() if t.strip()]
    assert code == 2 and len(err) == 1 and "--memory-limit: 'lots' is not a size" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_peak_memory_stays_under_the_limit(tmp_path, cli_env):
    """The book preset on synthetic data with 3 seeds: estimated ~0.8 GB in one wave (plus ~0.2-0.3 GB that the
    process holds before it plans: Python, jax, the data), so a 0.8 GB limit on the whole process forces
    waves; the run's own peak RSS stays under it. Measured by benchmarks' measured_process, whose launcher
    keeps this test process's own high-water mark out of the child's ru_maxrss."""
    limit = 800 * 10**6
    measure = load_script(ROOT / "benchmarks" / "_common.py", "benchmark_helpers").measured_process
    cpu_kernels.build_cpu_kernels()  # here, if not built yet: the C++ compiler's memory counts in the child's peak
    out = tmp_path / "run"
    args = ["--synthetic", "--seeds", "3", "--epochs", "2", "--memory-limit", "800MB", "--out", str(out)]
    flags = ["--no-progress", "--no-figures", "--no-tensorboard"]
    run = measure([sys.executable, str(SWEEP), *args, *flags], cli_env, capture=True)
    assert run["returncode"] == 0, run["stderr"]
    waves = len(fileio.read_json(out / fileio.CONFIG_FILE)["waves"])
    assert waves >= 2 and f"in {waves} waves to fit --memory-limit 0.8 GB" in run["stdout"], run["stdout"]
    peak = run["process_max_rss_bytes"]
    assert peak < limit, f"peak RSS {peak / 1e9:.2f} GB"
