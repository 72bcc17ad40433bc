"""Hostile folders and damaged caches (issue #23): jaxreg writes through no symbolic link and outside no
folder it was given, its lock survives a deleted lock file, report.py writes only where it may, damaged
parameters are refused, and damaged caches (CPU kernels, encoded data) heal with one warning.

Tiny in-process runs on synthetic data (compiled once per session).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxreg import cpu_kernels, fileio, runfolder, runs
from jaxreg import report as report_module
from jaxreg import sweep as sweep_module
from jaxreg.data import load_imdb
from jaxreg.params import load_params, params_file
from jaxreg.sweep import SweepConfig, SweepError, run_sweep
from jaxreg.variants import VariantSpec

ROOT = Path(__file__).resolve().parents[1]
TINY = SweepConfig("hostile", (VariantSpec("original", (4,)),), epochs=2, batch_size=256, synthetic=True)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_sweep(out, **kwargs):
    return run_sweep(TINY, out, progress=False, stream=io.StringIO(), tensorboard=False, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished TINY run with figures; copy it before changing it."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    tiny_sweep(out)
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode() + (p.read_bytes() if p.is_file() and not p.is_symlink() else b"/"))
    return h.hexdigest()


# --- 4. parameters carry a sha256 sidecar ------------------------------------------------------


def test_params_have_a_sha256sum_sidecar_in_the_manifest(finished):
    name = params_file("original", 0)
    sidecar = finished / (name + ".sha256")
    digest = hashlib.sha256((finished / name).read_bytes()).hexdigest()
    assert sidecar.read_text() == f"{digest}  seed_0.final.msgpack\n"  # sha256sum's format
    assert name + ".sha256" in runfolder.recorded(finished)
    if shutil.which("sha256sum"):  # checkable without jaxreg
        checked = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=sidecar.parent, capture_output=True, text=True)
        assert checked.returncode == 0 and checked.stdout.strip() == "seed_0.final.msgpack: OK"


def test_a_flipped_byte_in_params_is_refused_naming_the_file(finished, tmp_path):
    out = shutil.copytree(finished, tmp_path / "run")
    path = out / params_file("original", 0)
    intact = load_params(out, "original", 0)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last array's last float: loads fine without a checksum
    path.write_bytes(bytes(data))
    with pytest.raises(SweepError, match=rf"^{path} is damaged: its sha256 does not match seed_0.final.msgpack.sha256"):
        load_params(out, "original", 0)
    (out / (params_file("original", 0) + ".sha256")).unlink()  # an older run: no sidecar, no check
    unchecked = load_params(out, "original", 0)
    flat = [
        (a, b)
        for layer in intact["params"]
        for a, b in zip(intact["params"][layer].values(), unchecked["params"][layer].values())
    ]
    assert not all(np.array_equal(a, b) for a, b in flat)  # what loading without the check would give


# --- 1. symbolic links: never written through -------------------------------------------------


@pytest.mark.parametrize("flags", [{"overwrite": True}, {"resume": True}])
def test_a_run_folder_with_a_linked_params_folder_is_refused(finished, tmp_path, flags):
    other = shutil.copytree(finished, tmp_path / "other")
    out = shutil.copytree(finished, tmp_path / "run")
    shutil.rmtree(out / "params")
    (out / "params").symlink_to(other / "params")
    before, mine = _digest(other), _digest(out)
    with pytest.raises(SweepError, match=r"holds a symbolic link, params -> .*other/params, which jaxreg never writes"):
        tiny_sweep(out, **flags)
    assert _digest(other) == before and _digest(out) == mine
    assert not list(tmp_path.glob(".*.lock"))


def test_remove_recorded_deletes_nothing_through_a_link(tmp_path):
    other, out = tmp_path / "other", tmp_path / "run"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "a.txt").write_text("theirs")
    out.mkdir()
    (out / "sub").symlink_to(other / "sub")
    runfolder.record(out, "sub/a.txt")
    with pytest.raises(SweepError, match="holds a symbolic link, sub -> "):
        runfolder.remove_recorded(out)
    assert (other / "sub" / "a.txt").read_text() == "theirs" and (out / runfolder.MANIFEST_FILE).is_file()


def test_report_refuses_a_run_folder_with_a_linked_figure(finished, tmp_path, capsys):
    out = shutil.copytree(finished, tmp_path / "run")
    outside = tmp_path / "precious.png"
    outside.write_text("not a figure")
    (out / fileio.FIGURES_DIR / "val_loss_curves.png").unlink()
    (out / fileio.FIGURES_DIR / "val_loss_curves.png").symlink_to(outside)
    assert _load("report").main([str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a symbolic link, figures/val_loss_curves.png -> " in err[0], err
    assert outside.read_text() == "not a figure"


def test_report_out_writes_only_into_a_new_empty_or_own_folder(finished, tmp_path, capsys):
    report = _load("report")
    other = shutil.copytree(finished, tmp_path / "other")
    before = _digest(other)
    assert report.main([str(finished), "--out", str(other), "--no-figures"]) == 2  # another run folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is neither empty nor a report folder (no report.json)" in err[0], err
    assert _digest(other) == before
    dest = tmp_path / "report"
    for _ in range(2):  # new, then the report folder it made before
        assert report.main([str(finished), "--out", str(dest), "--no-figures"]) == 0
        assert fileio.read_json(dest / "report.json")["files"] == ["report.json", "summary.csv", "summary.md"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(finished), "--out", str(empty), "--no-figures"]) == 0
    (dest / "summary.md").unlink()
    (dest / "summary.md").symlink_to(other / "summary.md")
    capsys.readouterr()
    assert report.main([str(finished), "--out", str(dest), "--no-figures"]) == 2
    assert "holds a symbolic link, summary.md" in capsys.readouterr().err
    assert _digest(other) == before


def test_report_out_to_a_folder_it_cannot_write_is_one_line(finished, tmp_path, monkeypatch, capsys):
    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report_module.fileio, "write_json", refused)  # as a read-only folder (even for root)
    assert _load("report").main([str(finished), "--out", str(tmp_path / "ro"), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"report.py: error: cannot write the report into {tmp_path / 'ro'}: Permission denied"]


# --- 2. the lock: a deleted lock file lets no second run in ------------------------------------


def test_deleting_the_lock_file_mid_run_lets_no_second_run_in(tmp_path, monkeypatch):
    out = tmp_path / "run"
    refusals = []
    real_on_epoch = sweep_module._EpochWriter.on_epoch

    def on_epoch(self, epoch, row, take_snapshot):
        real_on_epoch(self, epoch, row, take_snapshot)
        if epoch == 1 and not refusals:
            runfolder.lock_path(out).unlink()  # a user tidying up
            assert runfolder.lock_held(out)  # the folder itself is still locked: load_run says "running"
            with pytest.raises(SweepError) as refused:
                tiny_sweep(out, overwrite=True)
            refusals.append(str(refused.value))

    monkeypatch.setattr(sweep_module._EpochWriter, "on_epoch", on_epoch)
    result = tiny_sweep(out, figures=False)
    assert len(refusals) == 1 and f"{out} is in use by another jaxreg run" in refusals[0]
    assert "\n" not in refusals[0]
    run = runs.load_run(out)
    assert run.status["state"] == "finished" and run.histories["original"]["loss"].shape == (1, 2)
    assert result.histories["original"]["loss"].shape == (1, 2)
    assert not list(tmp_path.glob(".*.lock")) and not runfolder.lock_held(out)


def test_a_refused_new_folder_is_left_absent_and_unlocked(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    entered = []
    monkeypatch.setattr(runfolder, "exclusive", lambda folder: entered.append(folder))
    with pytest.raises(SweepError, match="^no data: pass --data"):
        run_sweep(TINY.replace(synthetic=False), tmp_path / "run", progress=False, stream=io.StringIO())
    assert not entered and not list(tmp_path.iterdir())  # refused before the lock: no lock file, no folder


def test_a_linked_lock_file_is_not_followed(tmp_path):
    outside = tmp_path / "elsewhere" / "target"
    outside.parent.mkdir()  # following the link would create the file there
    runfolder.lock_path(tmp_path / "run").symlink_to(outside)
    with pytest.raises(
        SweepError, match=r"^cannot lock the output folder .*run \(.*\.run\.lock\): Too many levels of symbolic links"
    ):
        tiny_sweep(tmp_path / "run")
    assert not outside.exists() and not (tmp_path / "run").exists()


def test_exclusive_removes_the_empty_folder_it_created(tmp_path):
    out = tmp_path / "new"
    with runfolder.exclusive(out):
        assert out.is_dir() and runfolder.lock_held(out)
    assert not out.exists() and not list(tmp_path.iterdir())


# --- 2. --out values refused with the right reason ---------------------------------------------


def _cli_refusal(out: str, capsys) -> str:
    code = _load("sweep").main(["--synthetic", "--no-progress", "--epochs", "1", "--out", out])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("sweep.py: error: "), (code, err)
    return err[0]


def test_out_values_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "the output folder is an empty name" in _cli_refusal("", capsys)
    assert "is the root of the file system" in _cli_refusal("/", capsys)
    assert not Path("/..lock").exists()
    long = str(tmp_path / ("a" * 300))
    assert "File name too long" in _cli_refusal(long, capsys)
    almost = str(tmp_path / ("b" * 252))  # fits, but its lock file .<name>.lock would not
    assert "a name in it is too long for the file system" in _cli_refusal(almost, capsys)
    assert not list(tmp_path.iterdir())
    if Path("/proc/self").is_dir():
        line = _cli_refusal("/proc/x", capsys)
        assert "in use by another jaxreg run" not in line and "/proc/x" in line


# --- 3. caches heal ------------------------------------------------------------------------------


def test_a_truncated_cpu_kernel_library_is_rebuilt_with_one_warning(tmp_path, monkeypatch):
    built = cpu_kernels.build_cpu_kernels()  # this machine's library, built once per session: a copy saves a build
    library = Path(shutil.copy2(built, tmp_path / built.name))
    digest = hashlib.sha256(library.read_bytes()).hexdigest()  # its checksum as a build writes it (sha256sum format)
    (tmp_path / (library.name + ".sha256")).write_text(f"{digest}  {library.name}\n", encoding="ascii")
    assert cpu_kernels.build_cpu_kernels(tmp_path) == library  # the copy is taken as built
    intact = library.read_bytes()
    library.write_bytes(intact[: len(intact) // 2])  # dlopen of this file dies of a bus error
    # The rebuild's compiler (CXX) copies the intact build to its -o path: a real build takes ~25 s here,
    # and what is tested is that a damaged library is noticed, rebuilt in its place and checksummed anew.
    compiler = tmp_path / "fake-c++"
    compiler.write_text(f'#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\ncp "{built}" "$2"\n', encoding="utf-8")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.warns(
        UserWarning, match=r"kernel library .* is damaged \(checksum mismatch\); rebuilding it"
    ) as record:
        again = cpu_kernels.build_cpu_kernels(tmp_path)
    assert len(record) == 1 and again == library
    rebuilt = library.read_bytes()
    assert hashlib.sha256(rebuilt).hexdigest() == (tmp_path / (library.name + ".sha256")).read_text().split()[0]
    assert rebuilt == intact  # what the (fake) compiler wrote, in place of the truncated file
    import ctypes

    loaded = ctypes.cdll.LoadLibrary(str(library))  # loads: the symbols XLA registers are there
    assert all(hasattr(loaded, symbol) for symbol in cpu_kernels.TARGETS.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact now: no warning, no rebuild
        stamp = library.stat().st_mtime_ns
        assert cpu_kernels.build_cpu_kernels(tmp_path) == library and library.stat().st_mtime_ns == stamp


def test_a_data_cache_with_a_flipped_byte_is_rebuilt_with_one_warning(make_fake_imdb, tmp_path):
    archive, cache = make_fake_imdb(), tmp_path / "cache"
    good = load_imdb(archive, cache_dir=cache)
    (cache_file,) = cache.glob("*.npz")
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    cache_file.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuilt") as record:
        again = load_imdb(archive, cache_dir=cache)
    assert len(record) == 1
    np.testing.assert_array_equal(again.train.x.indices, good.train.x.indices)
    np.testing.assert_array_equal(again.validation.y, good.validation.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_imdb(archive, cache_dir=cache)


def test_a_truncated_compiled_program_is_removed_with_one_warning(tmp_path, monkeypatch):
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from jaxreg import cache

    saved = {
        name: getattr(jax.config, name)
        for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    }
    monkeypatch.delenv(cache.COMPILE_CACHE_ENV, raising=False)
    folder = tmp_path / "xla"
    try:
        cache.enable_compilation_cache(folder)
        program = jax.jit(lambda x: jax.numpy.cos(x) * 7.25 - 0.5)
        expected = np.asarray(program(jax.numpy.arange(5.0)))
        entries = sorted(folder.glob("*-cache"))
        assert entries
        for entry in entries:  # a process killed while JAX wrote them (in place)
            entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
        with pytest.warns(UserWarning, match=rf"removed {len(entries)} damaged compiled program\(s\) from") as record:
            cache.enable_compilation_cache(folder)
        assert len(record) == 1 and not list(folder.glob("*-cache"))
        jax.clear_caches()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # JAX reads no damaged entry: compiled and cached again
            np.testing.assert_array_equal(np.asarray(program(jax.numpy.arange(5.0))), expected)
        assert len(list(folder.glob("*-cache"))) == len(entries)
        assert cache.remove_damaged_programs(folder) == 0
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
