"""Shared fixtures: the real IMDB archive (loaded once per session), small fake aclImdb data, synthetic data."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jaxreg import cache
from jaxreg.data import load_imdb, synthetic_dataset

# The command line keeps compiled programs in the user's cache folder by default; tests leave it
# alone (and subprocesses that must compile, compile): tests/test_feedback.py turns it on in its own folders.
os.environ.setdefault("JAXREG_COMPILE_CACHE", "0")

# Compiling hundreds of small XLA programs is ~75% of the tests' time (tests/test_train.py on a 2-core Zen 1:
# 109 s cold, 25 s from a warm cache), and XLA's backend optimizations are most of a compile: without them
# the fast loop took 253 s instead of 441 s there, every test passing. So tests and the processes they start
# compile that way, unless JAXREG_TEST_FAST_COMPILE=0: .ci/run's numerics step sets it, so the tests that
# depend on XLA's float32 code also run compiled as users' runs are (at a second instruction set).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
if os.environ.get("JAXREG_TEST_FAST_COMPILE", "1") != "0":
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_COMPILE_FLAGS]))

ROOT = Path(__file__).resolve().parents[1]
IMDB_ARCHIVE = Path(
    os.environ.get("JAXREG_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"
)

FAKE_REVIEWS = {
    ("train", "neg"): ["Bad movie.<br />Awful!", "terrible, bad acting", "Boring<br/>bad plot<br>zzz"],
    ("train", "pos"): ["Great movie, loved it", "Don't miss: great acting!", "a great GREAT film"],
    ("test", "neg"): ["bad and boring", "awful film"],
    ("test", "pos"): ["great fun", "unseenword great"],
}


def write_fake_imdb(root: Path, reviews=None, *, archive: bool = True, name: str = "fake_imdb.tar.gz") -> Path:
    """Writes a tiny aclImdb layout (archive or folder) under root and returns its path.

    reviews maps (split, label) to a list of texts (ids 0, 1, ...) or to a dict {id: text};
    missing keys get no files. The archive lists members in reverse order plus a README and
    an unsup review, which loading must ignore or sort away.
    """
    reviews = FAKE_REVIEWS if reviews is None else reviews
    files = {"aclImdb/README": "fake", "aclImdb/train/unsup/0_0.txt": "ignored unsup review"}
    for (split, label), texts in reviews.items():
        items = texts.items() if isinstance(texts, dict) else enumerate(texts)
        rating = 8 if label == "pos" else 2
        for i, text in items:
            files[f"aclImdb/{split}/{label}/{i}_{rating}.txt"] = text
    if not archive:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
        return root / "aclImdb"
    path = root / name
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in reversed(list(files.items())):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def load_script(path: Path, name: str):
    """The module of a script that is not part of a package (experiments/sweep.py, a benchmark), loaded anew
    under `name`: the tests call its functions (e.g. the command line's main) in this process."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_concurrently(*runs: dict) -> list[subprocess.CompletedProcess]:
    """subprocess.run(**kwargs) for each dict in `runs`, all started at once; the results in order.

    For tests that compare independent processes (a multi-device run with a one-device one):
    on a machine with several cores they overlap instead of waiting on each other.
    """
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda kwargs: subprocess.run(**kwargs), runs))


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """A test that reads the real archive (the imdb_archive fixture, directly or through imdb) is marked
    imdb, so that the fast loop leaves it to .ci/run's second step without every such test saying so."""
    for item in items:
        if "imdb_archive" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.imdb)


def pytest_configure(config):
    """Tests send SIGINT to the processes they start; a process ignores it when it inherits SIG_IGN (as jaxreg's
    command line must: it keeps an inherited SIG_IGN), which is how a shell without job control starts a
    background job (`pytest ... &` in a script). So the test processes take SIGINT back from SIG_IGN: their
    children then start with the default disposition."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _python_processes_are_marked(request, monkeypatch):
    """A test that starts a Python process (sys.executable) must carry the `process` mark: the fast loop
    (`python -m pytest -q`) leaves such tests to .ci/run's second step, and this keeps it that way."""
    if request.node.get_closest_marker("process"):
        return
    start = subprocess.Popen.__init__

    def checked(self, args, *more, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) else args
        if str(program) == sys.executable:
            raise AssertionError(f"{request.node.nodeid} starts a Python process: mark it @pytest.mark.process")
        start(self, args, *more, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked)


def scripts_on_devices(tmp_path: Path, script: str, *runs: tuple[str, int, str]) -> list[tuple[dict, dict]]:
    """(layout, arrays) saved by `python -c script OUT.npz ARG` for each (label, n_devices, ARG), run at the same time.

    Each process gets n_devices CPU devices (keeping an instruction-set limit already in XLA_FLAGS) and saves
    an .npz whose "layout" entry is JSON; `arrays` holds the other entries."""
    flags = os.environ.get("XLA_FLAGS", "")
    calls = [
        dict(
            args=[sys.executable, "-c", script, str(tmp_path / f"{label}.npz"), arg],
            capture_output=True,
            text=True,
            timeout=600,
            env={
                **os.environ,
                "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n_devices}",
                "JAX_PLATFORMS": "cpu",
            },
        )
        for label, n_devices, arg in runs
    ]
    out = []
    for (label, _, _), result in zip(runs, run_concurrently(*calls)):
        assert result.returncode == 0, result.stderr[-4000:]
        with np.load(tmp_path / f"{label}.npz") as saved:
            out.append((json.loads(str(saved["layout"])), {k: saved[k] for k in saved.files if k != "layout"}))
    return out


@pytest.fixture
def fake_reviews():
    """The default texts of write_fake_imdb, {(split, label): [text, ...]} (a copy)."""
    return {key: list(texts) for key, texts in FAKE_REVIEWS.items()}


@pytest.fixture
def make_fake_imdb(tmp_path):
    """write_fake_imdb bound to this test's tmp_path."""
    return lambda *args, **kwargs: write_fake_imdb(tmp_path, *args, **kwargs)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict:
    """Environment for command-line subprocesses: this checkout's jaxreg, no JAXREG_DATA, no XLA_FLAGS but the fast
    compile's, and one JAX compilation cache for the whole test run, so that a program that several CLI tests run
    compiles once."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXREG_DATA", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    if FAST_COMPILE_FLAGS in os.environ.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = FAST_COMPILE_FLAGS
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


@pytest.fixture(scope="session")
def imdb_archive() -> Path:
    if not IMDB_ARCHIVE.is_file():
        pytest.skip(f"real IMDB archive not found at {IMDB_ARCHIVE} (set JAXREG_DATA to its path)")
    return IMDB_ARCHIVE


@pytest.fixture(scope="session")
def imdb_cache_dir() -> Path:
    """jaxreg's own encoded-data cache (env JAXREG_CACHE, else the user's cache folder), as the command line
    uses it: the archive is encoded on the first test run only (about 20 s), later runs load it in
    well under a second. The cache is keyed by the archive's checksum and the tokenizer's version;
    tests/test_data.py checks its rows against an independent encoding of the raw reviews."""
    return Path(os.environ.get("JAXREG_CACHE") or cache.cache_dir())


@pytest.fixture(scope="session")
def imdb(imdb_archive, imdb_cache_dir):
    """The real IMDB data, book protocol (test set as validation), loaded once per session."""
    return load_imdb(imdb_archive, cache_dir=imdb_cache_dir)


@pytest.fixture
def synthetic():
    return synthetic_dataset(n_train=300, n_validation=200, num_words=300, n_signal_words=20, seed=0)
