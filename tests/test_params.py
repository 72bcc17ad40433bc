"""Saved parameters, default run folders and the checkpoint's removal once a run has finished.

The parameters a finished run saved must reproduce the losses it reported; default folders
(without --out) must never collide or overwrite; `LATEST` must name the newest and be what
--resume without --out continues. Synthetic data, in-process runs (compiled once per session).
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxreg import batches as batching
from jaxreg import checkpoint, fileio, losses, outfolders, runfolder
from jaxreg import sweep as sweep_module
from jaxreg.data import densify
from jaxreg.model import MLP, init_params, unpadded
from jaxreg.params import load_params, params_file
from jaxreg.runs import load_run
from jaxreg.sweep import CHECKPOINT_DIR, SweepConfig, SweepError, load_dataset, run_sweep
from jaxreg.tasks import Task
from jaxreg.train import StepConfig, evaluate
from jaxreg.variants import VariantSpec

ROOT = Path(__file__).resolve().parents[1]

# "smaller" trains padded to 16 units; "fast" and "l2" overfit within 5 epochs (best epoch 3-5
# by seed); "exploding" diverges in epoch 1, so it has no best epoch.
CONFIG = SweepConfig(
    "params",
    (
        VariantSpec("original", (16, 16)),
        VariantSpec("smaller", (6, 6)),
        VariantSpec("fast", (16, 16), learning_rate=1e-2),
        VariantSpec("l2", (16, 16), l2=1e-3, learning_rate=1e-2),
        VariantSpec("exploding", (16, 16), learning_rate=1e30),
    ),
    epochs=5,
    seeds=2,
    batch_size=256,
    synthetic=True,
)
SPECS = {v.name: v for v in CONFIG.variants}


def quiet_sweep(out, config=CONFIG, **kwargs):
    stream = io.StringIO()
    result = run_sweep(config, out, figures=False, progress=False, stream=stream, **kwargs)
    return result, stream.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("params") / "run"
    quiet_sweep(out)
    return out


@pytest.fixture(scope="module")
def validation():
    """The run's validation split, rebuilt from its config, as the run batched it."""
    dataset = load_dataset(CONFIG)
    val = dataset.validation
    settings = CONFIG.run_settings()
    order = np.arange(len(val))
    cap = batching.capacity(val.x.lengths, [order], settings.eval_batch_size)
    return val, jax.device_put(batching.make_batches(val.x, val.y, order, settings.eval_batch_size, cap))


def val_metrics(params, name: str, validation) -> dict:
    """jaxreg.train.evaluate of saved parameters at the variant's true widths."""
    spec = SPECS[name]
    config = StepConfig(widths=spec.widths, product="sparse", task=Task(loss=CONFIG.loss))
    return {k: float(v) for k, v in evaluate(params, validation[1], spec.hyperparameters(), config=config).items()}


def trained_keys():
    return [(n, s) for n in SPECS if n != "exploding" for s in range(CONFIG.seeds)]


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,seed", trained_keys())
def test_final_parameters_give_the_reported_final_loss(finished, validation, name, seed):
    h = load_run(finished).histories[name]
    params = load_params(finished, name, seed=seed, which="final")
    got = val_metrics(params, name, validation)
    np.testing.assert_allclose(got["data_loss"], h["val_data_loss"][seed, -1], rtol=1e-6)
    np.testing.assert_allclose(got["loss"], h["val_loss"][seed, -1], rtol=1e-6)  # l2: with its penalty
    np.testing.assert_allclose(got["accuracy"], h["val_accuracy"][seed, -1], rtol=1e-6)


@pytest.mark.parametrize("name,seed", trained_keys())
def test_best_parameters_give_the_best_loss_of_the_seed(finished, validation, name, seed):
    h = load_run(finished).histories[name]
    curve = h["val_data_loss"][seed]
    best = int(np.argmin(curve))  # none of these diverged
    params = load_params(finished, name, seed=seed, which="best")
    np.testing.assert_allclose(val_metrics(params, name, validation)["data_loss"], curve[best], rtol=1e-6)


def test_some_best_epoch_is_not_the_last(finished):
    """Otherwise the best-epoch test above could not tell best from final."""
    run = load_run(finished)
    lasts = [int(np.argmin(run.histories[n]["val_data_loss"][s])) == CONFIG.epochs - 1 for n, s in trained_keys()]
    assert not all(lasts)
    for name, seed in trained_keys():
        final, best = (load_params(finished, name, seed=seed, which=w) for w in ("final", "best"))
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(best)))
        assert same == (int(np.argmin(run.histories[name]["val_data_loss"][seed])) == CONFIG.epochs - 1)


def test_a_padded_variant_is_saved_at_its_true_widths(finished, validation):
    params = load_params(finished, "smaller", seed=1)
    shapes = jax.tree.map(np.shape, params)
    assert shapes == {
        "params": {
            "hidden_0": {"kernel": (1000, 6), "bias": (6,)},
            "hidden_1": {"kernel": (6, 6), "bias": (6,)},
            "output": {"kernel": (6, 1), "bias": (1,)},
        }
    }
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    # what the README shows: the model applied to the data as is (here a dense multi-hot matrix)
    val = validation[0]
    logits = MLP((6, 6)).apply(params, densify(val.x))
    loss = float(np.mean(losses.binary_cross_entropy(logits, val.y, "keras")))
    h = load_run(finished).histories["smaller"]
    np.testing.assert_allclose(loss, h["val_data_loss"][1, -1], rtol=1e-5)


def test_a_variant_diverged_from_epoch_1_has_final_but_no_best_parameters(finished):
    assert load_params(finished, "exploding", seed=0)["params"]["hidden_0"]["kernel"].shape == (1000, 16)
    with pytest.raises(
        SweepError, match=r"no best parameters for variant 'exploding', seed 0: .* does not exist \(its seed diverged"
    ):
        load_params(finished, "exploding", seed=0, which="best")


def test_the_saved_files_are_in_the_manifest(finished):
    on_disk = sorted(str(p.relative_to(finished)) for p in finished.rglob("*") if p.is_file())
    assert runfolder.recorded(finished) == on_disk
    expected = {params_file(n, s, "final") for n in SPECS for s in range(CONFIG.seeds)}
    expected |= {params_file(n, s, "best") for n, s in trained_keys()}
    assert {f for f in on_disk if f.startswith("params/")} == expected | {
        f + ".sha256" for f in expected
    }  # with checksums
    assert params_file("smaller", 1, "best") == "params/smaller/seed_1.best.msgpack"
    assert params_file("a/../b", 0) == "params/a%2F..%2Fb/seed_0.final.msgpack"
    assert params_file("..", 0) == "params/%2E%2E/seed_0.final.msgpack"


# --- checkpoint ---------------------------------------------------------------------------


def test_the_checkpoint_is_gone_once_finished(finished):
    assert not (finished / CHECKPOINT_DIR).exists()
    assert CHECKPOINT_DIR not in runfolder.recorded(finished)
    _, said = quiet_sweep(finished, resume=True)  # a finished run is still just reported
    assert "already holds a finished run" in said and not (finished / CHECKPOINT_DIR).exists()


def test_keep_checkpoint_keeps_it_and_resuming_keeps_the_best_so_far(finished, tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    quiet_sweep(kept, keep_checkpoint=True)
    assert (kept / CHECKPOINT_DIR).is_dir() and CHECKPOINT_DIR in runfolder.recorded(kept)

    # stopped right after the checkpoint of epoch 2, then resumed: the same history and parameters
    save = sweep_module.save_checkpoint

    def save_then_stop(folder, snapshot):
        path = save(folder, snapshot)
        if snapshot.epochs_done == 2:
            raise KeyboardInterrupt
        return path

    out = tmp_path / "resumed"
    monkeypatch.setattr(sweep_module, "save_checkpoint", save_then_stop)
    with pytest.raises(sweep_module.SweepInterrupted):
        quiet_sweep(out, checkpoint_seconds=0)
    monkeypatch.undo()
    _, said = quiet_sweep(out, resume=True)
    assert "resuming after epoch 2" in said
    assert not (out / CHECKPOINT_DIR).exists()
    for folder in (kept, out):
        assert (folder / fileio.HISTORY_JSONL).read_bytes() == (finished / fileio.HISTORY_JSONL).read_bytes()
        files = [f for f in runfolder.recorded(finished) if f.startswith("params/")]
        assert [f for f in runfolder.recorded(folder) if f.startswith("params/")] == files
        for f in files:
            assert (folder / f).read_bytes() == (finished / f).read_bytes(), f


# --- default run folders ------------------------------------------------------------------


def _load_cli():
    spec = importlib.util.spec_from_file_location("sweep_cli", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = [
    "--synthetic",
    "--epochs",
    "2",
    "--variants",
    "original,smaller",
    "--batch-size",
    "256",
    "--no-figures",
    "--no-progress",
]


def _runs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())


def test_two_runs_without_out_get_their_own_folders(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    cli = _load_cli()
    base = Path("runs") / "book"
    assert cli.main(CLI) == 0
    first = _runs(base)
    assert cli.main(CLI) == 0  # the same command again: a new folder, the first untouched
    runs = _runs(base)
    assert len(first) == 1 and len(runs) == 2 and first[0] in runs
    second = next(r for r in runs if r != first[0])
    out = capfd.readouterr().out
    assert f"output: {base / first[0]}" in out and f"output: {base / second}" in out  # the plan line says where
    assert (base / "LATEST").read_text() == second + "\n" and outfolders.latest_folder(base) == base / second
    assert not any(p.is_symlink() for p in base.iterdir())  # nothing that `tensorboard --logdir runs/` follows twice
    for name in runs:
        assert load_run(base / name).status["state"] == "finished"
    assert load_run(outfolders.latest_folder(base)).histories["smaller"]["val_data_loss"].shape == (1, 2)

    # --resume without --out: the run latest names (finished: just reported)
    assert cli.main([*CLI, "--resume"]) == 0
    out = capfd.readouterr().out
    assert f"{base / second} already holds a finished run" in out


def test_resume_without_out_continues_latest(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    cli = _load_cli()
    save = sweep_module.save_checkpoint

    def save_then_stop(folder, snapshot):
        save(folder, snapshot)
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "save_checkpoint", save_then_stop)
    assert cli.main(["--checkpoint-seconds", "0", *CLI]) == 130  # a checkpoint after epoch 1, then Ctrl-C
    monkeypatch.setattr(sweep_module, "save_checkpoint", save)
    folder = outfolders.latest_folder(Path("runs") / "book")
    assert f"--no-progress --out {folder} --resume" in capfd.readouterr().err  # the hint names the folder
    assert cli.main([*CLI, "--resume"]) == 0
    out = capfd.readouterr().out
    assert f"output: {folder}; resuming after epoch 1" in out
    assert load_run(folder).status["state"] == "finished" and _runs(folder.parent) == [folder.name]


def test_a_refused_run_without_out_leaves_no_folder(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices sets it; restored after
    cli = _load_cli()
    base = Path("runs") / "book"
    assert cli.main(CLI) == 0
    before = outfolders.latest_folder(base).name
    assert cli.main([*CLI, "--devices", "3"]) == 2  # refused once its folder exists, before writing into it
    assert "sweep.py: error:" in capfd.readouterr().err
    assert _runs(base) == [before] and outfolders.latest_folder(base).name == before


def test_new_folders_never_collide(tmp_path):
    now = 1_790_000_000.0
    folders = [outfolders.new_folder(tmp_path, now) for _ in range(3)]
    stamp = folders[0].name
    assert [f.name for f in folders] == [stamp, f"{stamp}-2", f"{stamp}-3"]

    made, start = [], threading.Barrier(8)

    def make():
        start.wait()
        made.append(outfolders.new_folder(tmp_path / "race", now))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(f.is_dir() for f in made)


def test_latest_is_a_text_file_replaced_atomically(tmp_path):
    a, b = outfolders.new_folder(tmp_path, 0.0), outfolders.new_folder(tmp_path, 1.0)
    outfolders.point_latest(tmp_path, a)
    outfolders.point_latest(tmp_path, b)
    latest = tmp_path / "LATEST"
    assert not latest.is_symlink() and latest.read_text() == b.name + "\n" and outfolders.latest_folder(tmp_path) == b
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name, "LATEST"])  # no temporary left
    with pytest.raises(SweepError, match=r"nothing to resume: .*LATEST does not exist"):
        outfolders.latest_folder(tmp_path / "none")


def test_an_older_latest_link_is_read_then_replaced(tmp_path):
    """A run folder base of an older jaxreg has a `latest` symbolic link: read it, and drop it once LATEST is written."""
    a, b = outfolders.new_folder(tmp_path, 0.0), outfolders.new_folder(tmp_path, 1.0)
    os.symlink(a.name, tmp_path / "latest", target_is_directory=True)
    assert outfolders.latest_folder(tmp_path) == a
    outfolders.point_latest(tmp_path, b)
    assert not (tmp_path / "latest").is_symlink() and outfolders.latest_folder(tmp_path) == b


def test_unpadded_undoes_the_padding_of_init_params():
    key = jax.random.key(3)
    padded, mask = init_params(key, (6, 6), 50, (16, 16))
    alone, _ = init_params(key, (6, 6), 50)
    assert mask is not None
    cut = unpadded(padded, (6, 6))
    assert jax.tree.structure(cut) == jax.tree.structure(alone)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cut), jax.tree.leaves(alone)))
    with pytest.raises(ValueError, match="cannot cut a parameter"):
        unpadded(alone, (16, 16))


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    out = tmp_path / "run"
    quiet_sweep(out, keep_checkpoint=True)
    step = out / CHECKPOINT_DIR / str(CONFIG.epochs)
    meta = fileio.read_json(step / "meta" / "metadata")
    meta["format"] = 3  # checkpoint.msgpack's
    fileio.write_json(step / "meta" / "metadata", meta)
    checkpoint.write_digest(step)  # intact as files: refused for what they hold
    fileio.write_json(out / fileio.STATUS_FILE, {"state": "interrupted", "epochs_done": 1, "epochs": CONFIG.epochs})
    with pytest.raises(
        SweepError, match=rf"cannot resume from {re.escape(str(step))}: format 3, expected 4; use --overwrite"
    ):
        quiet_sweep(out, resume=True)


def test_a_sweep_gathers_no_state_and_writes_each_variants_files_from_its_shard(finished, tmp_path, monkeypatch):
    """Neither the checkpoint nor params/ gathers the state: the only gathered arrays are the epochs' metrics
    [seeds, configs]; each variant's files come from the shard that holds it, and equal the finished run's."""
    from jaxreg import distributed

    gathered = []
    gather = distributed.gather

    def recorded_gather(tree):
        gathered.extend(x.shape for x in jax.tree.leaves(tree))
        return gather(tree)

    monkeypatch.setattr(distributed, "gather", recorded_gather)
    out = tmp_path / "run"
    quiet_sweep(out, checkpoint_seconds=0)
    assert gathered and all(len(shape) == 2 for shape in gathered), sorted(set(gathered))
    files = [f for f in runfolder.recorded(finished) if f.startswith("params/")]
    assert [f for f in runfolder.recorded(out) if f.startswith("params/")] == files
    assert all((out / f).read_bytes() == (finished / f).read_bytes() for f in files)
