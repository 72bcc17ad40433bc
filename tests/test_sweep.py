"""SweepConfig and presets, and experiments/sweep.py end to end in subprocesses.

The subprocess runs share a persistent JAX compilation cache, so the tiny preset (one
program) compiles once per session. They run on synthetic data except the real-data test.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import numpy as np
import pytest

from jaxreg import fileio, history, machine, runfolder, runs
from jaxreg.sweep import CHECKPOINT_DIR, SweepConfig, SweepError, run_sweep
from jaxreg.variants import VariantError, VariantSpec

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
PRESETS_DIR = ROOT / "experiments" / "presets"
sys.path.insert(0, str(ROOT / "experiments"))
import presets  # noqa: E402

TINY_PRESET = '''"""python experiments/sweep.py --preset tiny.py --synthetic

Three 16-unit models for fast tests; "exploding" diverges (learning rate 1e30)."""

from jaxreg.sweep import SweepConfig
from jaxreg.variants import VariantSpec


def get_config():
    return SweepConfig(
        name="tiny",
        variants=(VariantSpec("original"), VariantSpec("l2", l2=1e-3), VariantSpec("exploding", learning_rate=1e30)),
        epochs=30,
        batch_size=32,
    )
'''
TINY = ["--synthetic", "--devices", "2", "--no-progress"]


@pytest.fixture(scope="session")
def sweep_env(cli_env):
    """Environment for CLI subprocesses: no JAXREG_DATA, one compilation cache shared by the test run (conftest)."""
    return cli_env


def sweep(*args, env, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SWEEP), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "tiny.py"
    path.write_text(TINY_PRESET)
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_preset, sweep_env, tmp_path_factory):
    """The tiny preset, uninterrupted: (CompletedProcess, run folder)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    return sweep("--preset", tiny_preset, *TINY, "--out", out, env=sweep_env), out


# --- config and presets (in-process) ----------------------------------------------------


def _load_vs_keras():
    spec = importlib.util.spec_from_file_location("vs_keras", ROOT / "benchmarks" / "vs_keras.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_book_preset_is_the_study_the_keras_comparison_builds():
    """`--preset book` trains the seven models that benchmarks/vs_keras.py builds in Keras from the spec's
    table (benchmarks/_common.STUDY_MODELS), with the book's optimizer and batch size: the study's numbers
    in the preset and in the Keras reference cannot drift apart unnoticed."""
    config = presets.load("book")
    vs_keras = _load_vs_keras()
    study = vs_keras.C.study_variants(list(vs_keras.C.STUDY_MODELS), optimizer="keras2")  # Keras 2.3's RMSprop
    assert config.variants == tuple(study)
    assert [v.name for v in config.variants][0] == "original" and len(config.variants) == 7
    assert all(v.learning_rate == 1e-3 for v in config.variants)  # RMSprop's default, as in the book
    assert config.batch_size == vs_keras.BATCH_SIZE
    assert (config.epochs, config.loss, config.validation, config.seeds) == (20, "keras", "test", 1)
    assert config.axis is None and not config.synthetic


def test_grid_presets():
    capacity = presets.load("capacity")
    widths = [v.widths for v in capacity.variants]
    assert len(widths) >= 10 and widths[0] == (1, 1) and widths[-1] == (1024, 1024) and capacity.axis == "width"
    assert all(w[0] == w[1] for w in widths) and widths == sorted(widths)
    l2 = presets.load("l2-grid")
    strengths = [v.l2 for v in l2.variants]
    assert strengths[0] == 0 and strengths[1] == 1e-5 and strengths[-1] == 1e-1 and l2.axis == "l2"
    assert np.all(np.diff(np.log10(strengths[1:])) > 0.3)  # a log grid
    assert all(v.widths == (16, 16) for v in l2.variants)
    dropout = presets.load("dropout-grid")
    np.testing.assert_allclose([v.dropout_rate for v in dropout.variants], np.arange(9) / 10)
    assert dropout.axis == "dropout_rate"
    for config in (capacity, l2, dropout):
        assert set(config.axis_values()) == {v.name for v in config.variants}


def test_decay_vs_l2_preset_pairs_matched_strengths():
    """Each coupled penalty has a decoupled partner at the documented match (wd = 2c/G, l1_proximal = c/G)."""
    config = presets.load("decay-vs-l2")
    spec = importlib.util.spec_from_file_location("decay_vs_l2", PRESETS_DIR / "decay_vs_l2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    variants = config.variants
    assert len(variants) <= 11 and all(v.widths == (16, 16) and v.learning_rate == 1e-3 for v in variants)
    assert config.epochs == 20 and config.batch_size == 512 and config.axis is None
    fields = ("l1", "l2", "weight_decay", "l1_proximal")
    kinds = {f: [getattr(v, f) for v in variants if getattr(v, f) > 0] for f in fields}
    assert all(sum(getattr(v, f) > 0 for f in fields) <= 1 for v in variants)  # one regularizer per variant
    assert [v.name for v in variants if all(getattr(v, f) == 0 for f in fields)] == ["original"]
    assert len(kinds["l2"]) >= 2 and len(kinds["l1"]) >= 2
    np.testing.assert_allclose(kinds["weight_decay"], [2 * c / module.G for c in kinds["l2"]], rtol=1e-6)
    np.testing.assert_allclose(kinds["l1_proximal"], [c / module.G for c in kinds["l1"]], rtol=1e-6)
    assert "decay-vs-l2" in _load_cli().build_parser().format_help()  # --preset lists it


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_docstring_starts_with_its_command(name):
    doc = ast.get_docstring(ast.parse((PRESETS_DIR / presets.PRESETS[name]).read_text()))
    assert doc.splitlines()[0] == f"python experiments/sweep.py --preset {name}"
    assert presets.load(name).name == name


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"epochs": -1}, "epochs=-1 must be an integer >= 1"),
        ({"seeds": 0}, "seeds=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"product": "fast"}, "product='fast'"),
        ({"variant_loop": "loop"}, "variant_loop='loop'"),
        ({"validation": "train"}, "validation='train'"),
        ({"devices": 0}, "devices=0"),
        ({"synthetic": True, "validation": "holdout"}, "validation='holdout' must be 'test' with synthetic"),
        ({"synthetic": True, "data": "x.tar.gz"}, "cannot be combined"),
        ({"axis": "colour"}, "axis='colour'"),
        ({"variants": (VariantSpec("a"), VariantSpec("a", l2=1.0))}, "duplicate names"),
        ({"variants": (VariantSpec("a", seed=3),)}, "seed 0"),
        ({"variants": ()}, "non-empty"),
        ({"colour": 1}, r"unknown field\(s\) \['colour'\]"),
        ({"divergence_threshold": 0}, "divergence_threshold=0 must be a finite number > 0"),
        ({"divergence_threshold": -1e6}, "divergence_threshold=-1000000.0"),
        ({"divergence_threshold": math.inf}, "divergence_threshold=inf"),
        ({"divergence_threshold": math.nan}, "divergence_threshold=nan"),
        ({"divergence_threshold": "1e6"}, "divergence_threshold='1e6'"),
        ({"divergence_threshold": True}, "divergence_threshold=True"),
    ],
)
def test_sweep_config_rejects_bad_values_by_name(changes, match):
    with pytest.raises(SweepError, match=match):
        SweepConfig("t", (VariantSpec("original"),)).replace(**changes)


def test_sweep_config_select_and_specs():
    config = presets.load("book").select(["l2", "original"]).replace(seeds=3)
    assert [v.name for v in config.variants] == ["original", "l2"]  # the preset's order
    assert [(v.name, v.seed) for v in config.variant_specs()] == [(n, s) for n in ("original", "l2") for s in range(3)]
    with pytest.raises(SweepError, match="unknown variant.*nope.*known: original"):
        config.select(["nope"])
    assert json.loads(json.dumps(config.to_dict()))["variants"][1]["l2"] == 0.001
    with pytest.raises(VariantError):
        VariantSpec("x", widths=(0,))


# --- command line: bad input -------------------------------------------------------------


def _tree_digest(path: Path) -> str:
    if not path.exists():
        return "absent"
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode() + (p.read_bytes() if p.is_file() else b"/"))
    return h.hexdigest()


BAD_INPUTS = [
    "unknown preset",
    "missing preset file",
    "unknown variant",
    "negative epochs",
    "zero seeds",
    "zero batch size",
    "zero devices",
    "not an integer",
    "bad choice",
    "holdout with synthetic",
    "no data",
    "missing data path",
    "corrupt archive",
    "unwritable out",
    "finished run",
    "unfinished run",
    "foreign folder",
    "resume and overwrite",
    "legacy folder",
    "legacy overwrite",
    "config.json only",
    "bad divergence threshold",
]
NO_OVERWRITE_HINT = ("foreign folder", "legacy folder", "legacy overwrite", "config.json only")


def _bad_input_cases(tmp: Path) -> dict:
    """{case: (args, message fragment, folder that must stay untouched)}; prepares the folders."""
    (tmp / "a_file").write_text("not a folder")
    (tmp / "garbage.tar.gz").write_bytes(b"this is not a gzip archive" * 10)
    finished, unfinished = {"state": "finished"}, {"state": "running", "epochs_done": 2, "epochs": 5}
    for name, status in (("finished", finished), ("unfinished", unfinished), ("legacy", finished)):
        (tmp / name).mkdir()
        if name != "legacy":  # an older jaxreg wrote no manifest
            runfolder.record(tmp / name, fileio.CONFIG_FILE, fileio.STATUS_FILE)
        (tmp / name / fileio.CONFIG_FILE).write_text(json.dumps({"config": {}}))
        (tmp / name / fileio.STATUS_FILE).write_text(json.dumps(status))
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("mine")
    (tmp / "mine").mkdir()
    (tmp / "mine" / fileio.CONFIG_FILE).write_text("{}")  # the user's own config.json
    new = tmp / "new"
    return {
        "unknown preset": (["--preset", "nope", "--synthetic"], "unknown preset 'nope'", new),
        "missing preset file": (["--preset", str(tmp / "nope.py"), "--synthetic"], "does not exist", new),
        "unknown variant": (["--variants", "original,nope", "--synthetic"], "unknown variant(s) nope", new),
        "negative epochs": (["--epochs", "-3", "--synthetic"], "epochs=-3", new),
        "zero seeds": (["--seeds", "0", "--synthetic"], "seeds=0", new),
        "zero batch size": (["--batch-size", "0", "--synthetic"], "batch_size=0", new),
        "zero devices": (["--devices", "0", "--synthetic"], "devices=0", new),
        "not an integer": (["--epochs", "two", "--synthetic"], "invalid int value: 'two'", new),
        "bad choice": (["--product", "fast", "--synthetic"], "invalid choice: 'fast'", new),
        "holdout with synthetic": (["--validation", "holdout", "--synthetic"], "must be 'test' with synthetic", new),
        "no data": ([], "no data: pass --data PATH", new),
        "missing data path": (["--data", tmp / "absent.tar.gz"], "does not exist", new),
        "corrupt archive": (["--data", tmp / "garbage.tar.gz"], "truncated or corrupt", new),
        "unwritable out": (["--synthetic", "--out", tmp / "a_file" / "run"], "is not a folder", tmp / "a_file"),
        "finished run": (["--synthetic", "--out", tmp / "finished"], "--overwrite", tmp / "finished"),
        "unfinished run": (
            ["--synthetic", "--out", tmp / "unfinished"],
            "2/5 epochs done); pass --resume",
            tmp / "unfinished",
        ),
        "foreign folder": (
            ["--synthetic", "--out", tmp / "foreign", "--overwrite"],
            "not a jaxreg run folder",
            tmp / "foreign",
        ),
        "resume and overwrite": (["--synthetic", "--resume", "--overwrite"], "contradict", new),
        "legacy folder": (
            ["--synthetic", "--out", tmp / "legacy", "--resume"],
            "a run of an older jaxreg",
            tmp / "legacy",
        ),
        "legacy overwrite": (
            ["--synthetic", "--out", tmp / "legacy", "--overwrite"],
            "neither resumes nor overwrites",
            tmp / "legacy",
        ),
        "config.json only": (["--synthetic", "--out", tmp / "mine", "--overwrite"], "no manifest.json", tmp / "mine"),
        "bad divergence threshold": (["--synthetic", "--divergence-threshold", "-1"], "divergence_threshold=-1.0", new),
    }


def _load_cli():
    spec = importlib.util.spec_from_file_location("sweep_cli", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    """Every case through the CLI's main() in-process (fast); the process boundary is tested below."""
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    args, fragment, folder = _bad_input_cases(tmp_path)[case]
    before = _tree_digest(folder)
    code = _load_cli().main([*map(str, args), *([] if "--out" in args else ["--out", str(folder)])])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("sweep.py: error: "), stderr
    assert fragment in lines[0]
    assert _tree_digest(folder) == before
    assert not list(tmp_path.rglob(".*.lock"))  # a refused run leaves no lock file
    if case in NO_OVERWRITE_HINT:
        assert "--overwrite" not in lines[0]


@pytest.mark.process
@pytest.mark.parametrize("case", ["not an integer", "negative epochs", "corrupt archive", "unfinished run"])
def test_bad_input_in_a_real_process(case, tmp_path, sweep_env):
    """One case per stage (flags, config, data, output folder) as a real subprocess."""
    args, fragment, folder = _bad_input_cases(tmp_path)[case]
    before = _tree_digest(folder)
    proc = sweep(*args, *([] if "--out" in args else ["--out", folder]), env=sweep_env, cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert _tree_digest(folder) == before


def test_help_explains_every_flag(capsys):
    try:
        code = _load_cli().main(["--help"])
    except SystemExit as exited:  # argparse's own exit, where main() does not catch it
        code = exited.code
    proc = subprocess.CompletedProcess(["--help"], code, capsys.readouterr().out, "")
    assert proc.returncode == 0
    for flag in (
        "--preset",
        "--epochs",
        "--seeds",
        "--batch-size",
        "--data",
        "--synthetic",
        "--out",
        "--validation",
        "--devices",
        "--variants",
        "--product",
        "--variant-loop",
        "--resume",
        "--overwrite",
        "--no-figures",
        "--keep-checkpoint",
        "--divergence-threshold",
    ):
        assert flag in proc.stdout
    assert "JAXREG_DATA" in proc.stdout and "book" in proc.stdout


# --- command line: runs ------------------------------------------------------------------


@pytest.mark.process
def test_divergence_is_reported_and_the_others_train_on(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "sweep.py: diverged (NaN, infinite or a loss above 1e+06): exploding (seed 0, epoch 1)"
    assert "exploding (seed 0) diverged" in proc.stderr  # announced when it happens
    run = runs.load_run(out)
    assert run.histories["exploding"]["diverged"].all()
    for name in ("original", "l2"):
        h = run.histories[name]
        assert not h["diverged"].any() and np.isfinite(h["val_data_loss"]).all()
        assert h["loss"][0, -1] < h["loss"][0, 0] - 0.2  # trained on
    rows = {r["name"]: r for r in run.summary}
    assert rows["exploding"]["diverged"] == "0@1" and rows["exploding"]["best_epoch"] is None
    assert rows["original"]["diverged"] == "" and rows["original"]["best_epoch"] >= 1
    assert run.status["state"] == "finished" and run.status["diverged"] == [
        {"variant": "exploding", "seed": 0, "epoch": 1}
    ]
    assert run.config["devices"]["count"] == 2 and run.config["config"]["devices"] == 2
    assert "| exploding" in proc.stdout and "seed 0 @ 1" in proc.stdout


WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _interrupt(command, env, sig, out: Path, after_epochs: int) -> tuple[subprocess.Popen, str]:
    """Start the command, send `sig` once status.json reports more than `after_epochs` epochs done."""
    # Python's Ctrl-C handler in the child, whatever it inherits: a test runner started in the
    # background (`cmd &` in a script) passes SIGINT on ignored, and Python then keeps ignoring it
    assert command[0] == sys.executable
    command = [sys.executable, "-c", WITH_CTRL_C, *command[1:]]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while True:
        try:
            if fileio.read_json(out / fileio.STATUS_FILE)["epochs_done"] > after_epochs:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    proc.send_signal(sig)
    return proc, proc.communicate(timeout=120)[1]


@pytest.mark.process
def test_interrupted_and_killed_run_resumes_to_the_same_history(tiny_run, tiny_preset, sweep_env, tmp_path):
    reference, reference_out = tiny_run
    assert reference.returncode == 3, reference.stderr
    out = tmp_path / "run"
    # a checkpoint after every epoch: status.json's epochs_done, which _interrupt polls, follows the checkpoint
    args = ["--preset", str(tiny_preset), *TINY, "--checkpoint-seconds", "0", "--out", str(out)]
    command = [sys.executable, str(SWEEP), *args]

    proc, stderr = _interrupt(command, sweep_env, signal.SIGINT, out, 0)  # Ctrl-C
    assert proc.returncode == 130, stderr
    status = fileio.read_json(out / fileio.STATUS_FILE)
    assert status["state"] == "interrupted" and 1 <= status["epochs_done"] < 30, status
    assert f"interrupted after epoch {status['epochs_done']}/30; checkpoint: {out / CHECKPOINT_DIR}" in stderr
    assert f"resume with: python experiments/sweep.py {shlex.join(args)} --resume" in stderr
    stopped = runs.load_run(out)  # the history so far, written after every epoch
    assert stopped.state == "interrupted" and min(stopped.epochs_present.values()) >= status["epochs_done"]

    changed = sweep(*args, "--resume", "--epochs", "31", env=sweep_env)
    assert changed.returncode == 2 and "epochs: saved 30, now 31" in changed.stderr

    first_stop = status["epochs_done"]
    proc, stderr = _interrupt([*command, "--resume"], sweep_env, signal.SIGKILL, out, first_stop)  # a killed process
    assert proc.returncode == -signal.SIGKILL
    status = fileio.read_json(out / fileio.STATUS_FILE)
    assert status["state"] == "running" and first_stop < status["epochs_done"] < 30, status

    resumed = sweep(*args, "--resume", env=sweep_env)
    assert resumed.returncode == 3, resumed.stderr
    assert f"resuming after epoch {status['epochs_done']}" in resumed.stdout
    assert "epoch 1: exploding (seed 0) diverged" in resumed.stderr  # from the restored history
    assert (out / fileio.HISTORY_JSONL).read_text() == (reference_out / fileio.HISTORY_JSONL).read_text()
    assert (out / fileio.SUMMARY_CSV).read_text() == (reference_out / fileio.SUMMARY_CSV).read_text()
    assert fileio.read_json(out / fileio.STATUS_FILE)["resumed_from_epoch"] == status["epochs_done"]
    assert not list(out.glob(".*.tmp"))

    again = sweep(*args, "--resume", "--no-figures", env=sweep_env)
    assert again.returncode == 3 and "already holds a finished run" in again.stdout


# --- run folder: manifest, lock, checkpoint checksum -------------------------------------

SMALL = SweepConfig(
    "small", (VariantSpec("original", (4,)), VariantSpec("l2", (4,), l2=1e-3)), epochs=2, batch_size=256, synthetic=True
)


def small_sweep(out, **kwargs) -> object:
    """SMALL in-process (compiled once per test session), quietly."""
    return run_sweep(
        kwargs.pop("config", SMALL), out, progress=kwargs.pop("progress", False), stream=io.StringIO(), **kwargs
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished SMALL run folder with figures and its checkpoint; copy it before changing it."""
    out = tmp_path_factory.mktemp("small") / "run"
    small_sweep(out, keep_checkpoint=True)
    return out


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _set_status(folder: Path, state: str, epochs_done: int) -> None:
    fileio.write_json(folder / fileio.STATUS_FILE, {"state": state, "epochs_done": epochs_done, "epochs": SMALL.epochs})


def test_manifest_lists_every_file_jaxreg_wrote(small_run):
    written = runfolder.files_as_recorded(small_run)  # checkpoint/: one entry, its files named by orbax
    assert runfolder.recorded(small_run) == written
    assert {"manifest.json", "config.json", "checkpoint", "figures/vs_original.png"} <= set(written)
    assert not list(small_run.parent.glob(".*lock")) and not list(
        small_run.glob(".*")
    )  # the lock file went with the run


def test_overwrite_removes_only_jaxregs_files(small_run, tmp_path):
    out = _copy(small_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / fileio.FIGURES_DIR / "mine.png").write_bytes(b"mine")
    runfolder.record(out, "figures/old.png")  # a figure of an earlier run, which this one does not draw
    (out / "figures" / "old.png").write_bytes(b"old")
    (out / "figures" / ".old.png.x1.tmp").write_bytes(b"half")  # a write a killed run left behind
    fileio.write_json(out / fileio.CONFIG_FILE, {**fileio.read_json(out / fileio.CONFIG_FILE), "created": "before"})
    small_sweep(out, overwrite=True, figures=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "figures" / "mine.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["mine.png"]
    assert fileio.read_json(out / fileio.CONFIG_FILE)["created"] != "before"
    assert "figures/old.png" not in runfolder.recorded(out) and "notes.txt" not in runfolder.recorded(out)


def test_remove_recorded_keeps_the_users_files_and_folders(tmp_path):
    runfolder.record(tmp_path, "config.json", "figures/a.png", "deep/er/b.txt")
    for name in ("config.json", "figures/a.png", "deep/er/b.txt", "deep/mine.txt", "mine.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    runfolder.remove_recorded(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["deep", "deep/mine.txt", "mine.txt"]  # figures/ and deep/er/ were emptied, so removed
    with pytest.raises(ValueError, match="not a path inside the run folder"):
        runfolder.record(tmp_path, "../outside.txt")


def test_overwrite_refuses_a_manifest_that_points_outside(small_run, tmp_path):
    out = _copy(small_run, tmp_path / "run")
    (tmp_path / "precious.txt").write_text("keep")
    manifest = fileio.read_json(out / runfolder.MANIFEST_FILE)
    fileio.write_json(out / runfolder.MANIFEST_FILE, {**manifest, "files": [*manifest["files"], "../precious.txt"]})
    with pytest.raises(SweepError, match=r"cannot overwrite .*\.\./precious\.txt is not a path inside the run folder"):
        small_sweep(out, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep" and (out / fileio.CONFIG_FILE).is_file()


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
@pytest.mark.parametrize("exists", [True, False])
def test_a_held_lock_refuses_a_second_writer(small_run, tmp_path, flags, exists):
    out = _copy(small_run, tmp_path / "run") if exists else tmp_path / "new"
    before = _tree_digest(out)
    with filelock.FileLock(runfolder.lock_path(out), timeout=0):
        message = f"{out} is in use by another jaxreg run (lock {runfolder.lock_path(out)})"
        with pytest.raises(SweepError, match=re.escape(message)):
            small_sweep(out, **flags)
    assert _tree_digest(out) == before


HOLD_THE_LOCK = (
    "import sys, time; from jaxreg import runfolder; "
    "lock = runfolder.exclusive(sys.argv[1]); lock.__enter__(); print('locked', flush=True); time.sleep(120)"
)


@pytest.mark.process
def test_a_killed_holder_leaves_no_lock_behind(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        code = _load_cli().main(["--synthetic", "--no-progress", "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "is in use by another jaxreg run" in lines[0], lines
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert runfolder.lock_path(out).is_file()  # the file stays; the OS lock died with the process
    with runfolder.exclusive(out):
        pass


def test_a_lock_file_deleted_by_its_holder_is_not_taken(tmp_path, monkeypatch):
    """The classic race of deleting a lock file: a process opened the file, then its holder deleted it and let go.
    Locking that orphan would let a third process, which creates a new file, hold the lock too; so the
    late process must lock the file now at the path instead."""
    out = tmp_path / "run"
    with runfolder.exclusive(out) as path:
        stale = os.open(path, os.O_RDWR)  # opened while held
    assert not path.exists()
    opened, real_open = [], os.open

    def open_stale_first(name, flags, mode=0o777):
        opened.append(name)
        return stale if len(opened) == 1 else real_open(name, flags, mode)

    monkeypatch.setattr(runfolder.os, "open", open_stale_first)
    with runfolder.exclusive(out) as again:
        monkeypatch.undo()
        assert opened.count(path) == 2 and again.is_file() and runfolder.lock_held(out)
        with pytest.raises(runfolder.LockError), runfolder.exclusive(out):  # the new file is the lock
            pass
    assert not again.exists()


@pytest.mark.process
def test_two_runs_into_one_folder(tiny_preset, sweep_env, tmp_path, capsys):
    """A second run, --overwrite or --resume while a run writes the folder: refused, the first run unharmed."""
    out = tmp_path / "run"
    args = [
        "--preset",
        str(tiny_preset),
        "--synthetic",
        "--no-progress",
        "--epochs",
        "3",
        "--no-figures",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(
        [sys.executable, str(SWEEP), *args, "--devices", "2"],
        env=sweep_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while True:
        try:
            if fileio.read_json(out / fileio.STATUS_FILE)["state"] == "running":
                break
        except (OSError, ValueError, KeyError):
            pass
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # hold it mid-run while the others try
    try:
        config = (out / fileio.CONFIG_FILE).read_text()
        for extra in ([], ["--overwrite"], ["--resume"]):
            code = _load_cli().main([*args, *extra])
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(lines) == 1, (extra, lines)
            assert f"{out} is in use by another jaxreg run (lock {runfolder.lock_path(out)})" in lines[0]
            assert (out / fileio.CONFIG_FILE).read_text() == config
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 3, stderr
    assert (out / fileio.CONFIG_FILE).read_text() == config  # config.json and history of the same run
    run = runs.load_run(out)
    assert run.status["state"] == "finished" and run.histories["original"]["loss"].shape == (1, 3)
    assert runfolder.recorded(out) == runfolder.files_as_recorded(out)


def _largest_array_file(step: Path) -> Path:
    return max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bytes(step: Path) -> None:
    path = _largest_array_file(step)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _truncate(step: Path) -> None:
    path = _largest_array_file(step)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        _flip_bytes,
        _truncate,
        lambda step: (step / "meta" / "metadata").unlink(),
        lambda step: (step / "jaxreg-sha256.json").unlink(),
    ],
    ids=["flipped bytes", "truncated array file", "missing metadata", "missing digest"],
)
def test_a_corrupt_checkpoint_is_refused_on_resume(small_run, tmp_path, damage):
    out = _copy(small_run, tmp_path / "run")
    _set_status(out, "interrupted", 1)
    step = out / CHECKPOINT_DIR / str(SMALL.epochs)
    damage(step)
    before = _tree_digest(out)
    with pytest.raises(SweepError) as refused:
        small_sweep(out, resume=True)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {step} is corrupt or unreadable (") and "\n" not in message, message
    assert message.endswith("; use --overwrite to start again"), message
    assert _tree_digest(out) == before


def test_an_uncommitted_step_is_not_read(small_run, tmp_path):
    """A save killed before orbax renamed its step into place leaves `<step>.orbax-checkpoint-tmp`: the
    run resumes from the step before it (here there is none, so from epoch 1, as status.json allows)."""
    out = _copy(small_run, tmp_path / "run")
    step = out / CHECKPOINT_DIR / str(SMALL.epochs)
    step.rename(step.with_name(f"{SMALL.epochs}.orbax-checkpoint-tmp"))
    _set_status(out, "interrupted", 1)
    with pytest.raises(SweepError, match="says 1 epoch\\(s\\) done but checkpoint/ holds no complete checkpoint"):
        small_sweep(out, resume=True)
    _set_status(out, "interrupted", 0)
    result = small_sweep(out, resume=True, figures=False)
    assert result.resumed_from == 0 and fileio.read_json(out / fileio.STATUS_FILE)["state"] == "finished"
    assert (out / fileio.HISTORY_JSONL).read_bytes() == (small_run / fileio.HISTORY_JSONL).read_bytes()


def test_a_missing_checkpoint_is_refused_unless_no_epoch_was_done(small_run, tmp_path):
    out = _copy(small_run, tmp_path / "run")
    shutil.rmtree(out / CHECKPOINT_DIR)
    _set_status(out, "interrupted", 1)
    with pytest.raises(
        SweepError, match="says 1 epoch\\(s\\) done but checkpoint/ holds no complete checkpoint; use --overwrite"
    ):
        small_sweep(out, resume=True)
    _set_status(out, "interrupted", 0)  # interrupted during the first epoch: starts again at epoch 1
    result = small_sweep(out, resume=True, figures=False)
    assert result.resumed_from == 0 and fileio.read_json(out / fileio.STATUS_FILE)["state"] == "finished"
    assert not (out / CHECKPOINT_DIR).exists()  # deleted once finished


def test_divergence_threshold_flags_a_huge_finite_loss(tmp_path, capsys):
    """Every loss of SMALL is above 0.01: with that threshold everything diverges from epoch 1."""
    config = SMALL.replace(divergence_threshold=0.01)
    result = small_sweep(tmp_path / "run", config=config, figures=False, progress=True)
    assert sorted(result.diverged) == [("l2", 0, 1), ("original", 0, 1)]
    assert "epoch 1: original (seed 0) diverged" in capsys.readouterr().err  # the progress bar's message
    run = runs.load_run(tmp_path / "run")
    assert run.config["config"]["divergence_threshold"] == 0.01 and run.divergence_threshold == 0.01
    assert len(run.status["diverged"]) == 2 and all(h["diverged"].all() for h in run.histories.values())
    assert small_sweep(tmp_path / "default", figures=False).diverged == []  # the same losses, default threshold


def test_divergence_threshold_on_the_command_line(tmp_path, capsys):
    preset = tmp_path / "small.py"
    preset.write_text(
        "from jaxreg.sweep import SweepConfig\nfrom jaxreg.variants import VariantSpec\n\n\ndef get_config():\n"
        f"    return {SMALL!r}\n"
    )
    args = ["--preset", str(preset), "--synthetic", "--no-progress", "--no-figures", "--out", str(tmp_path / "run")]
    assert _load_cli().main([*args, "--divergence-threshold", "0.01"]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last
        == "sweep.py: diverged (NaN, infinite or a loss above 0.01): original (seed 0, epoch 1), l2 (seed 0, epoch 1)"
    )


@pytest.mark.process
def test_real_data_sweep_end_to_end(imdb, imdb_archive, imdb_cache_dir, sweep_env, tmp_path):
    out = tmp_path / "book"
    env = {**sweep_env, "JAXREG_CACHE": str(imdb_cache_dir)}
    args = ["--epochs", "2", "--seeds", "2", "--variants", "original,smaller,l2", "--data", imdb_archive, "--out", out]
    proc = sweep(*args, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert imdb.describe() in proc.stdout and "the TEST set is used as the validation set" in proc.stdout
    assert "best val data loss" in proc.stderr  # the progress bar's postfix

    config = fileio.read_json(out / fileio.CONFIG_FILE)
    assert config["config"]["epochs"] == 2 and config["config"]["seeds"] == 2
    assert [v["name"] for v in config["variants"]] == ["original", "smaller", "l2"]
    assert config["data"]["checksum"] == imdb.checksum and config["data"]["describe"] == imdb.describe()
    assert config["validation_protocol"] == "test-as-validation"
    assert set(config["versions"]) >= {"jax", "flax", "optax", "numpy"} and config["devices"]["count"] >= 1
    assert [b["variants"] for b in config["plan"]] == [["original", "smaller", "l2"]]  # smaller pads into 16

    lines = (out / fileio.HISTORY_JSONL).read_text().splitlines()
    assert len(lines) == 3 * 2 * 2
    assert set(json.loads(lines[0])) == {"variant", "seed", "epoch", *history.METRICS, "diverged"}
    assert len((out / fileio.HISTORY_CSV).read_text().splitlines()) == 1 + len(lines)
    run = runs.load_run(out)
    assert list(run.histories) == ["original", "smaller", "l2"]
    for name, h in run.histories.items():
        assert h["val_data_loss"].shape == (2, 2) and not h["diverged"].any()
        assert (h["val_accuracy"][:, -1] > 0.85).all(), (name, h["val_accuracy"])  # the book: ~0.88 after 2 epochs
        assert not np.array_equal(h["loss"][0], h["loss"][1])  # the seeds differ
    l2 = run.histories["l2"]
    np.testing.assert_allclose(l2["val_loss"], l2["val_data_loss"] + l2["val_penalty"], rtol=1e-5)
    assert (l2["val_penalty"] > 0).all() and (run.histories["original"]["val_penalty"] == 0).all()
    assert [r["name"] for r in run.summary] == ["original", "smaller", "l2"]
    assert all(r["seeds"] == 2 and r["best_val_data_loss_std"] is not None for r in run.summary)
    summary_md = (out / fileio.SUMMARY_MD).read_text()
    assert "| l2 " in summary_md and "(+penalty)" in summary_md and "overfitting from" in summary_md
    figures = sorted(p.name for p in (out / fileio.FIGURES_DIR).iterdir())
    assert figures == ["val_loss_curves.png", "vs_original.png"]
    assert all((out / fileio.FIGURES_DIR / f).stat().st_size > 10_000 for f in figures)
    assert not (out / CHECKPOINT_DIR).exists() and run.status["state"] == "finished"  # deleted once finished


def test_resuming_on_another_instruction_set_says_it_is_not_bit_for_bit(small_run, tmp_path, monkeypatch):
    out = _copy(small_run, tmp_path / "run")
    _set_status(out, "interrupted", 1)
    assert fileio.read_json(out / fileio.CONFIG_FILE)["machine"]["instruction_set"] == machine.instruction_set()
    stream = io.StringIO()
    run_sweep(SMALL, out, resume=True, figures=False, progress=False, stream=stream, keep_checkpoint=True)
    assert "note:" not in stream.getvalue()
    _set_status(out, "interrupted", 1)
    monkeypatch.setattr(machine, "instruction_set", lambda: "SSE4_2")
    stream = io.StringIO()
    run_sweep(SMALL, out, resume=True, figures=False, progress=False, stream=stream)
    assert "not bit for bit" in stream.getvalue() and "now SSE4_2" in stream.getvalue()
