"""Placing buckets on devices: spread (each bucket whole on one device, buckets training at the same
time) changes where a bucket runs, never its histories.

JAX fixes its CPU device count when it initializes, so the multi-device runs happen in
subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=2. Their histories are
compared bit for bit with a one-device process: a bucket spread onto one device runs the very
program it runs alone, whatever the other device does meanwhile.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_concurrently, scripts_on_devices
from jaxreg import variants as V
from jaxreg.runs import load_run

SWEEP = Path(__file__).resolve().parent.parent / "experiments" / "sweep.py"


class Dev:
    """Stands in for a jax device: place_buckets only hands devices on."""

    def __init__(self, i):
        self.i = i

    def __repr__(self):
        return f"dev{self.i}"


def bucket(widths, n_configs=1, seeds=(0,)):
    configs = tuple(
        V.VariantSpec(f"v{'x'.join(map(str, widths))}_{i}", widths=widths, l2=1e-4 * i) for i in range(n_configs)
    )
    return V.Bucket(V.PaddingPolicy().widths(widths), "keras2", configs, tuple(seeds))


# --- place_buckets: pure ----------------------------------------------------------------------


def test_bucket_cost_grows_with_widths_configs_and_seeds():
    small, wide = bucket((16, 16), 6), bucket((1024, 1024), 1)
    assert V.bucket_cost(wide, 10_000) > 10 * V.bucket_cost(small, 10_000)
    assert V.bucket_cost(bucket((16, 16), 2), 100) == 2 * V.bucket_cost(bucket((16, 16), 1), 100)
    assert V.bucket_cost(bucket((16, 16), 1, (0, 1, 2)), 100) == 3 * V.bucket_cost(bucket((16, 16), 1), 100)


def test_spread_puts_each_bucket_on_one_device_costliest_first_to_the_least_loaded():
    devices = [Dev(0), Dev(1)]
    book = [bucket((16, 16), 6), bucket((1024, 1024), 1)]  # plan's order: the 16-unit bucket first
    assert V.place_buckets(book, devices, "spread") == [(devices[1],), (devices[0],)]
    # four buckets of costs 8, 4, 3, 1 (x a 16-unit model) on two devices: 8 | 4 + 3 + 1
    four = [bucket((16, 16), n) for n in (3, 8, 1, 4)]
    placed = V.place_buckets(four, devices, "spread")
    assert placed == [(devices[1],), (devices[0],), (devices[1],), (devices[1],)]
    # more devices than buckets: the first ones, one bucket each
    assert [p[0].i for p in V.place_buckets(book, [Dev(i) for i in range(4)], "spread")] == [1, 0]


def test_one_device_or_shard_puts_every_bucket_on_all_devices():
    book = [bucket((16, 16), 6), bucket((1024, 1024), 1)]
    one = [Dev(0)]
    assert V.place_buckets(book, one, "spread") == [(one[0],), (one[0],)]
    two = [Dev(0), Dev(1)]
    assert V.place_buckets(book, two, "shard") == [tuple(two), tuple(two)]


@pytest.mark.parametrize(
    "placement, devices, message",
    [
        ("scatter", [Dev(0)], "placement must be one of"),
        ("spread", [], "no devices"),
    ],
)
def test_place_buckets_rejects_bad_input(placement, devices, message):
    with pytest.raises(ValueError, match=message):
        V.place_buckets([bucket((16, 16))], devices, placement)


def test_run_refuses_a_mesh_and_meshes_or_the_wrong_number_of_meshes():
    from jaxreg.data import synthetic_dataset

    data = synthetic_dataset(n_train=64, n_validation=32, num_words=200, seed=0)
    specs = [V.VariantSpec("a"), V.VariantSpec("b", widths=(64, 64))]
    mesh = V.variant_mesh()
    with pytest.raises(V.VariantError, match="one mesh per bucket"):
        V.run(specs, data, V.RunSettings(epochs=1), meshes=[mesh])
    with pytest.raises(V.VariantError, match="not both"):
        V.run(specs, data, V.RunSettings(epochs=1), mesh=mesh, meshes=[mesh, mesh])


# --- spread over two devices equals one device, bit for bit ----------------------------------

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from jaxreg.data import synthetic_dataset
    from jaxreg import variants as V

    out, placement = sys.argv[1], sys.argv[2]
    specs = V.with_seeds([
        V.VariantSpec("narrow", (16, 16)),
        V.VariantSpec("narrow_l2", (6, 6), l2=1e-3),
        V.VariantSpec("narrow_dropout", (16, 16), dropout_rate=0.3),
        V.VariantSpec("wide", (128, 128)),
    ], [0, 1])
    dataset = synthetic_dataset(n_train=600, n_validation=300, num_words=500, seed=1)
    settings = V.RunSettings(epochs=3, batch_size=128, eval_batch_size=128)
    buckets = V.plan(specs)
    placed = V.place_buckets(buckets, jax.devices(), placement, dataset.num_words)
    meshes = [V.variant_mesh(on) for on in placed]
    history = V.run(specs, dataset, settings, meshes=meshes).history
    programs = [V.BucketProgram(b, dataset, settings, m) for b, m in zip(buckets, meshes)]
    ran_on = [sorted(str(d) for d in p.mesh.devices.flat) for p in programs]
    arrays = {f"{n}/{s}/{m}": v for (n, s), h in history.items() for m, v in h.items()}
    np.savez(out, layout=json.dumps({"devices": [str(d) for d in jax.devices()], "ran_on": ran_on}), **arrays)
    """
)


@pytest.mark.process
def test_spread_over_two_devices_equals_one_device_bit_for_bit(tmp_path):
    runs = ("spread", 2, "spread"), ("single", 1, "spread")
    (layout, spread), (single_layout, single) = scripts_on_devices(tmp_path, SCRIPT, *runs)
    assert len(layout["devices"]) == 2
    assert sorted(map(tuple, layout["ran_on"])) == sorted(map(tuple, [[d] for d in layout["devices"]])), (
        "the two buckets, each on its own device"
    )
    assert len(single_layout["devices"]) == 1
    assert set(spread) == set(single) and len(single) == 4 * 2 * len(V.METRICS)
    for key in single:
        assert np.isfinite(single[key]).all(), key
        np.testing.assert_array_equal(spread[key], single[key], err_msg=key)


# --- the command line: spread by default on CPU, the same histories as one device -------------


@pytest.fixture(scope="module")
def sweep_env(cli_env):
    return cli_env  # conftest: one compilation cache for the test run


def _sweeps(env, *runs: tuple[Path, list[str]]):
    """experiments/sweep.py --synthetic into each (out, extra flags), the processes run at the same time."""
    common = ["--synthetic", "--epochs", "3", "--no-progress", "--no-figures", "--no-tensorboard"]
    calls = [
        dict(
            args=[sys.executable, str(SWEEP), *common, "--out", str(out), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        for out, extra in runs
    ]
    done = []
    for (out, _), result in zip(runs, run_concurrently(*calls)):
        assert result.returncode == 0, result.stderr[-4000:]
        done.append((result, load_run(out)))
    return done


@pytest.mark.process
def test_book_command_spreads_its_programs_and_trains_as_on_one_device(tmp_path, sweep_env):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    (default, run), (one, single) = _sweeps(
        sweep_env, (tmp_path / "default", []), (tmp_path / "one", ["--devices", "1"])
    )
    assert run.config["devices"]["placement"] == "spread"
    assert run.config["devices"]["count"] == min(2, cores), "one host device per program, up to the usable cores"
    on = [tuple(p["devices"]) for p in run.config["plan"]]
    assert len(on) == 2 and all(len(d) == 1 for d in on)
    if cores >= 2:
        assert on[0] != on[1], "the 16-unit bucket and `bigger` on different devices"
        assert " on cpu:" in default.stdout.splitlines()[2], "the plan line names the devices"
    assert single.config["devices"] == {**single.config["devices"], "count": 1, "placement": "shard"}
    assert (
        set(run.histories) == set(single.histories) == {"original", "smaller", "bigger", "l2", "l1", "l1_l2", "dropout"}
    )
    for name, h in single.histories.items():
        for metric in V.METRICS:
            np.testing.assert_array_equal(run.histories[name][metric], h[metric], err_msg=f"{name} {metric}")
    assert run.status["state"] == single.status["state"] == "finished"


def test_more_devices_than_programs_is_refused_when_spread(tmp_path, monkeypatch, capsys):
    """experiments/sweep.py's main() in this process: refused after planning, before any device is set up."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices sets it; restored after
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    spec = importlib.util.spec_from_file_location("sweep_cli", SWEEP)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = [
        "--synthetic",
        "--variants",
        "original,bigger",
        "--placement",
        "spread",
        "--devices",
        "3",
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main(args) == 2
    assert "devices=3 is more than the 2 program(s) of this run (placement spread" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
