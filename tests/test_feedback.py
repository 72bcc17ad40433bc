"""What a run tells its user and what it keeps for the next one: the cache folders (one root,
XDG_CACHE_HOME), JAX's persistent compilation cache (on by default on the command line, its
opt-outs), compile time apart from training, the cold-load progress line, and the one list of
per-variant numbers.

The command-line runs are subprocesses on synthetic data, each with its own cache root (the
CPU kernels copied in, so nothing is rebuilt); the test suite otherwise runs with
JAXREG_COMPILE_CACHE=0 (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxreg import cache, compiletime, config, cpu_kernels, data, plots, train, views
from jaxreg.sweep import _Progress
from jaxreg.variants import VariantSpec

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
SMALL_RUN = ("--synthetic", "--epochs", "1", "--variants", "original,l2", "--no-figures", "--no-progress")
JAX_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def jax_cache_options():
    """Restores JAX's compilation-cache options (and its once-per-process decision) after the test."""
    from jax.experimental.compilation_cache import compilation_cache

    saved = {name: getattr(jax.config, name) for name in JAX_CACHE_OPTIONS}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_one_cache_root_honours_xdg_cache_home(tmp_path, monkeypatch, jax_cache_options):
    """The data cache, the kernels and the compiled programs all live under $XDG_CACHE_HOME/jaxreg."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("JAXREG_CACHE", raising=False)
    monkeypatch.delenv(cache.COMPILE_CACHE_ENV, raising=False)
    root = tmp_path / "xdg" / "jaxreg"
    assert cache.cache_dir() == root
    assert data._cache_file(None, "checksum", 100).parent == root
    # a stand-in compiler that only creates its -o file: where the kernel build puts its library
    fake = tmp_path / "fake-c++"
    fake.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert cpu_kernels.build_cpu_kernels().parent == root / "kernels"
    jax.config.update("jax_compilation_cache_dir", None)  # as in a process where nobody set one
    assert cache.enable_compilation_cache() == root / "xla"
    assert jax.config.jax_compilation_cache_dir == str(root / "xla")

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir("xla") == tmp_path / "home" / ".cache" / "jaxreg" / "xla"
    assert data._cache_file(None, "checksum", 100).parent == tmp_path / "home" / ".cache" / "jaxreg"
    monkeypatch.setenv("JAXREG_CACHE", str(tmp_path / "data"))  # still moves the data cache alone
    assert data._cache_file(None, "checksum", 100).parent == tmp_path / "data"


def test_compile_cache_env_opt_out_changes_nothing(tmp_path, monkeypatch, jax_cache_options):
    monkeypatch.setenv(cache.COMPILE_CACHE_ENV, "0")
    jax.config.update("jax_compilation_cache_dir", None)
    assert cache.enable_compilation_cache(tmp_path / "xla") is None
    assert jax.config.jax_compilation_cache_dir is None and not (tmp_path / "xla").exists()


def test_compile_time_counts_programs_and_seconds():
    with compiletime.measure() as compiled:
        jax.jit(lambda x: x * 3.0 - 0.123456)(jax.numpy.ones(7)).block_until_ready()  # a program new to this process
    assert compiled.programs >= 1 and compiled.seconds > 0 and compiled.cache_hits <= compiled.programs
    assert re.match(r"compiled \d+ XLA computation\(s\) in \d+\.\d s", compiled.describe())


def _env(xdg: Path, **extra: str) -> dict:
    """The command line with its own cache root holding this machine's CPU kernels (built once, elsewhere)."""
    drop = ("JAXREG_DATA", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    env = {k: v for k, v in os.environ.items() if k not in drop and k != cache.COMPILE_CACHE_ENV}
    env.update(
        XDG_CACHE_HOME=str(xdg), PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    if cpu_kernels.cpu_kernels_available():
        library = cpu_kernels.build_cpu_kernels()
        (xdg / "jaxreg" / "kernels").mkdir(parents=True, exist_ok=True)
        for name in (library.name, library.name + ".sha256"):  # with its checksum, or it is built again
            shutil.copy2(library.with_name(name), xdg / "jaxreg" / "kernels" / name)
    return {**env, **extra}


def _sweep(out: Path, env: dict, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(SWEEP), *SMALL_RUN, "--out", str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _compiled(stdout: str) -> tuple[int, int]:
    """(programs, loaded from the cache) of the run's "compiled N XLA computation(s) in X s" line."""
    match = re.search(
        r"^compiled (\d+) XLA computation\(s\) in [\d.]+ s(?: \((\d+) loaded from the compilation cache\))?",
        stdout,
        re.M,
    )
    assert match, stdout
    return int(match[1]), int(match[2] or 0)


@pytest.mark.process
def test_second_run_loads_every_program_from_the_compilation_cache(tmp_path):
    """Default on: the first run fills $XDG_CACHE_HOME/jaxreg/xla, the second loads every program it needs
    from there (JAX's cache-hit events, not a timing), and trains bit for bit the same."""
    env, xla = _env(tmp_path / "xdg"), tmp_path / "xdg" / "jaxreg" / "xla"
    first = _sweep(tmp_path / "first", env)
    programs, loaded = _compiled(first)
    assert programs > 0 and loaded == 0
    entries = set(os.listdir(xla))
    assert entries
    second = _sweep(tmp_path / "second", env)
    assert _compiled(second) == (programs, programs)
    assert set(os.listdir(xla)) == entries  # nothing new to compile
    for run in ("first", "second"):
        status = json.loads((tmp_path / run / "status.json").read_text())
        assert status["state"] == "finished" and 0 < status["compile_seconds"] <= status["seconds"]
    assert (tmp_path / "first" / "history.jsonl").read_text() == (tmp_path / "second" / "history.jsonl").read_text()


@pytest.mark.process
@pytest.mark.parametrize("how", ["flag", "env"])
def test_opt_outs_leave_the_compilation_cache_folder_empty(how, tmp_path):
    env = _env(tmp_path / "xdg", **({cache.COMPILE_CACHE_ENV: "0"} if how == "env" else {}))
    stdout = _sweep(tmp_path / "run", env, *(["--no-compile-cache"] if how == "flag" else []))
    assert _compiled(stdout)[0] > 0
    xla = tmp_path / "xdg" / "jaxreg" / "xla"
    assert not xla.exists() or not any(xla.iterdir())
    assert json.loads((tmp_path / "run" / "status.json").read_text())["compile_seconds"] > 0


def test_cold_load_says_what_it_reads_only_when_asked(make_fake_imdb, tmp_path, capsys):
    archive = make_fake_imdb()
    data.load_imdb(archive, num_words=8, cache_dir=tmp_path / "quiet")
    assert capsys.readouterr().err == ""  # library calls stay quiet
    data.load_imdb(archive, num_words=8, cache_dir=tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert (
        f"Reading and encoding the IMDB reviews of archive {archive} (first time; cached afterwards in {tmp_path / 'loud'})"
        in err
    )
    assert "10/10" in err  # the bar over the reviews, ending full
    data.load_imdb(archive, num_words=8, cache_dir=tmp_path / "loud", progress=True)
    assert capsys.readouterr().err == ""  # a cache hit has nothing to say
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive")
    with pytest.raises(data.DataError):
        data.load_imdb(garbage, cache_dir=tmp_path / "loud", progress=True)
    assert capsys.readouterr().err == ""  # nothing was read: the error stays the only message


def test_progress_rate_leaves_out_the_compiling_first_epoch(capsys):
    sweep_config = config.SweepConfig(name="t", variants=(VariantSpec("a"),), epochs=5)
    row = {("a", 0): {"loss": 0.5, "val_data_loss": 0.4, "val_loss": 0.4}}
    progress = _Progress(sweep_config, 0, {}, enabled=True)
    bar = progress.bar
    started = bar.start_t = bar.last_print_t = bar.start_t - 100.0  # the first epoch compiled for 100 s
    progress.epoch_done(0, row)
    assert bar.n == 1 and bar.format_dict["rate"] is None  # no estimate yet rather than one from compiling
    assert bar.start_t == started  # the elapsed time still counts it
    bar.last_print_t -= 2.0  # the second epoch took 2 s
    progress.epoch_done(1, row)
    assert bar.format_dict["rate"] == pytest.approx(0.5, rel=0.2)  # 2 s per epoch, not ~50
    progress.close()
    capsys.readouterr()


def test_one_list_of_per_variant_numbers():
    """train.Hyperparameters is the list: VariantSpec's numbers, the sweep axes and the figure labels follow it."""
    names = train.HYPERPARAMETERS
    other = ("name", "widths", "optimizer", "nesterov", "schedule", "seed", "model", *views.FIELDS)
    numbers = {f.name: f.default for f in dataclasses.fields(VariantSpec) if f.name not in other}
    assert numbers == train.Hyperparameters._field_defaults
    assert config.AXES == ("width", *train.SCALAR_HYPERPARAMETERS, *views.FIELDS)
    assert set(names) - set(train.SCALAR_HYPERPARAMETERS) == {"boundaries", "scales"}  # vectors: not an axis
    assert {f.name: f.default for f in dataclasses.fields(VariantSpec) if f.name in views.FIELDS} == {
        f.name: f.default for f in dataclasses.fields(views.View)
    }
    assert set(plots.AXIS_LABELS) == set(config.AXES)
    # each optimizer and schedule reads some of the numbers: two specs set every scalar between them
    numbers = {name: 0.01 * (i + 1) for i, name in enumerate(train.SCALAR_HYPERPARAMETERS)}
    numbers["decay_steps"] = 100.0
    reads = {"sgd": {"momentum", "decay_rate", "decay_steps"}, "adam": {"b1", "b2", "eps", "warmup_steps", "alpha"}}
    for optimizer, schedule in (("sgd", "exponential"), ("adam", "cosine")):
        unread = (
            {n for r in reads.values() for n in r}
            - reads[optimizer]
            - ({"decay_steps"} if schedule == "cosine" else set())
        )
        given = {k: v for k, v in numbers.items() if k not in unread}
        spec = VariantSpec("v", optimizer=optimizer, schedule=schedule, **given)
        values = {k: float(v) for k, v in spec.hyperparameters()._asdict().items() if k in given}
        assert {k: values[k] for k in given} == pytest.approx(given)
