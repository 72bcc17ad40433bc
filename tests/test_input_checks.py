"""Bad input is refused up front, in one line naming the field and value, before anything is
written or allocated: library entry points (VariantSpec, RunSettings, SweepConfig, load_imdb),
data paths, preset files, device counts, the memory estimate, and batch capacities that do not
grow with the number of epochs. Property-based tests (hypothesis) in tests/test_input_properties.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxreg import batches as batching
from jaxreg import memory, runplan, sweep
from jaxreg import variants as V
from jaxreg.data import MAX_NUM_WORDS, DataError, load_imdb
from jaxreg.sweep import SweepConfig, SweepError
from jaxreg.variants import BucketProgram, RunSettings, VariantError, VariantSpec

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
sys.path.insert(0, str(ROOT / "experiments"))
import presets  # noqa: E402


def _load_cli():
    spec = importlib.util.spec_from_file_location("sweep_cli_input", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(argv, capsys, monkeypatch) -> tuple[int, list[str]]:
    """main(argv) in-process: (exit status, non-empty stderr lines). XLA_FLAGS is restored afterwards."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    try:
        code = _load_cli().main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


# --- VariantSpec, RunSettings, SweepConfig: types and ranges ----------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", 1e300),  # inf in float32
        ("learning_rate", 1e39),
        ("learning_rate", 1e-50),  # 0 in float32
        ("l2", 1e39),
        ("l1", 1e300),
        ("weight_decay", 3.5e38),
        ("l1_proximal", float("nan")),
        ("dropout_rate", 0.99999999),  # 1.0 in float32
        ("seed", 2**32),
        ("seed", 2**70),
        ("widths", (10**6, 10**6)),
        ("widths", (16, 2**16 + 1)),
        ("widths", 16),
        ("optimizer", ["keras2"]),
    ],
)
def test_variant_spec_refuses_values_that_cannot_train(field, value):
    with pytest.raises(VariantError, match=rf"'v'.*{field}="):
        VariantSpec("v", **{field: value})


def test_variant_spec_accepts_the_documented_edges():
    spec = VariantSpec("v", (V.MAX_WIDTH, 1), learning_rate=3.4e38, l2=3.4e38, seed=V.MAX_SEED, dropout_rate=0.9999)
    assert spec.seed == 2**32 - 1 and spec.widths == (65536, 1)
    # the largest seed goes through every key derivation a variant uses
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed), 1), 7)
    assert key.shape == ()
    assert len(batching.epoch_order(spec.seed, V.MAX_EPOCHS, 10)) == 10


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": True},
        {"epochs": 10**7},
        {"batch_size": 2.0},
        {"eval_batch_size": 2**31},
        {"loss": "hinge"},
        {"product": "fast"},
        {"variant_loop": ["map"]},
    ],
)
def test_run_settings_refuses_by_field(changes):
    ((field, value),) = changes.items()
    with pytest.raises(ValueError, match=rf"RunSettings\.{field} .*got {re.escape(repr(value))}"):
        RunSettings(**changes)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"epochs": 10**9}, r"epochs=1000000000 is above the maximum 1,000,000"),
        ({"epochs": True}, r"epochs=True must be an integer"),
        ({"seeds": 4097}, r"seeds=4097 is above the maximum 4,096"),
        ({"batch_size": 2**40}, r"batch_size=1099511627776 is above the maximum"),
        ({"devices": 5000}, r"devices=5000 is above the maximum"),
        ({"devices": False}, r"devices=False must be an integer"),
        ({"holdout_size": 1.5}, r"holdout_size=1.5 must be an integer"),
    ],
)
def test_sweep_config_refuses_absurd_values(changes, match):
    with pytest.raises(SweepError, match=match):
        SweepConfig("t", (VariantSpec("original"),)).replace(**changes)


# --- load_imdb: arguments and paths ---------------------------------------------------------


@pytest.mark.parametrize(
    "num_words, match",
    [
        ("10000", r"num_words='10000' must be an integer, not str"),
        (True, r"num_words=True must be an integer, not bool"),
        (1e4, r"num_words=10000.0 must be an integer, not float"),
        (10**15, r"num_words=1000000000000000 is too large.*2,147,483,647"),
        (3, r"num_words=3 is too small"),
    ],
)
def test_num_words_type_and_range(make_fake_imdb, num_words, match):
    with pytest.raises(DataError, match=match):
        load_imdb(make_fake_imdb(), num_words=num_words, use_cache=False)
    assert MAX_NUM_WORDS == 2**31 - 1


def test_largest_num_words_loads(make_fake_imdb):
    assert load_imdb(make_fake_imdb(), num_words=MAX_NUM_WORDS, use_cache=False).num_words == MAX_NUM_WORDS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": ""}, r"path='' is empty"),
        ({"path": "   "}, r"path='   ' is empty"),
        ({"path": b"/tmp/x.tar.gz"}, r"path=b'/tmp/x.tar.gz' must be a str or os.PathLike"),
        ({"path": 7}, r"path=7 must be"),
        ({"validation": ["test"]}, r"unknown validation protocol \['test'\]"),
        ({"holdout_size": "10"}, r"holdout_size='10' must be an integer >= 1"),
        ({"holdout_size": True}, r"holdout_size=True must be an integer"),
        ({"seed": -1}, r"seed=-1 must be an integer >= 0"),
        ({"source": ["folder"]}, r"unknown source \['folder'\]"),
    ],
)
def test_load_imdb_argument_checks(kwargs, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "" must not mean the current folder
    with pytest.raises(DataError, match=match):
        load_imdb(**{"path": tmp_path, **kwargs}, use_cache=False)


def test_empty_env_path_is_refused(monkeypatch):
    monkeypatch.setenv("JAXREG_DATA", "  ")
    with pytest.raises(DataError, match="is empty"):
        load_imdb(use_cache=False)


def _special_files(tmp_path: Path) -> dict:
    fifo = tmp_path / "fifo.tar.gz"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    files = {"a FIFO": (fifo, sock), "a socket": (sock_path, sock)}
    if os.path.exists("/dev/zero"):
        files["a character device"] = (Path("/dev/zero"), sock)
    return files


@pytest.mark.parametrize("kind", ["a FIFO", "a socket", "a character device"])
def test_special_files_are_refused_without_reading(kind, tmp_path):
    files = _special_files(tmp_path)
    if kind not in files:
        pytest.skip("no /dev/zero here")
    path, sock = files[kind]
    try:
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=rf"{path}' is {kind}"):
            load_imdb(path, use_cache=False)
        assert time.perf_counter() - t0 < 5
        link = tmp_path / "link.tar.gz"
        link.symlink_to(path)  # followed: a link to a device is refused too
        with pytest.raises(DataError, match=rf"is {kind}"):
            load_imdb(link, use_cache=False)
    finally:
        sock.close()


def _deny(monkeypatch, name: str, part: str):
    """Make os.<name> raise PermissionError for paths containing `part` (root ignores real permissions)."""
    real = getattr(os, name)

    def fake(path, *args, **kwargs):
        if part in Path(os.fspath(path)).as_posix():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


@pytest.mark.parametrize(
    "call, part, match",
    [
        ("scandir", "train/pos", r"cannot read the folder '.*train/pos' \(Permission denied\)"),
        ("stat", "aclImdb/train", r"cannot access '.*aclImdb/train.*' \(Permission denied\)"),
        ("stat", "aclImdb", r"cannot access '.*aclImdb' \(Permission denied\)"),
    ],
)
def test_unreadable_folders_are_one_data_error(make_fake_imdb, monkeypatch, call, part, match):
    folder = make_fake_imdb(archive=False)
    _deny(monkeypatch, call, part)
    with pytest.raises(DataError, match=match):
        load_imdb(folder.parent, use_cache=False)


def test_unreadable_folder_through_the_cli(make_fake_imdb, monkeypatch, capsys, tmp_path):
    folder = make_fake_imdb(archive=False)
    _deny(monkeypatch, "scandir", "train/pos")
    code, lines = run_cli(["--data", folder, "--out", tmp_path / "run", "--no-progress"], capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and "Permission denied" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_special_file_through_the_cli(tmp_path, monkeypatch, capsys):
    fifo = tmp_path / "imdb.tar.gz"
    os.mkfifo(fifo)
    code, lines = run_cli(["--data", fifo, "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and "is a FIFO" in lines[0], lines
    assert not (tmp_path / "run").exists()


# --- preset files ---------------------------------------------------------------------------

GOOD_HEAD = (
    '"""python experiments/sweep.py --preset broken.py"""\n'
    "from jaxreg.sweep import SweepConfig\nfrom jaxreg.variants import VariantSpec\n"
)
PRESET_ERRORS = {
    "syntax error": (GOOD_HEAD + "def get_config(:\n    pass\n", 4, "invalid syntax"),
    "non-UTF-8 bytes": (GOOD_HEAD + "NAME = 'caf\xe9'\n", 4, "'utf-8' codec can't decode byte 0xe9"),
    "failing import": (
        GOOD_HEAD + "import no_such_module_xyz\n",
        4,
        "ModuleNotFoundError: No module named 'no_such_module_xyz'",
    ),
    "get_config raises": (
        GOOD_HEAD + "def get_config():\n    return 1 / 0\n",
        5,
        "get_config\\(\\) failed: ZeroDivisionError",
    ),
    "wrong type": (GOOD_HEAD + "def get_config():\n    return {'name': 'x'}\n", 4, "returned dict, not a SweepConfig"),
    "bad variant": (
        GOOD_HEAD + "def get_config():\n    return SweepConfig('x', (VariantSpec('a', learning_rate=1e39),))\n",
        5,
        "learning_rate=1e\\+39",
    ),
    "no get_config": (GOOD_HEAD + "get_config = 3\n", None, "defines no get_config"),
}


@pytest.mark.parametrize("case", PRESET_ERRORS)
def test_broken_preset_file_is_one_line_with_file_and_line(case, tmp_path, monkeypatch, capsys):
    text, line, match = PRESET_ERRORS[case]
    path = tmp_path / "broken.py"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(SweepError, match=match) as raised:
        presets.load(str(path))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    if line is not None:
        assert f"line {line}" in message, message
    code, lines = run_cli(["--preset", path, "--synthetic", "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sweep.py: error: preset file"), lines
    assert not (tmp_path / "run").exists()


# --- devices ---------------------------------------------------------------------------------


def test_more_devices_than_variants_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    code, lines = run_cli(
        ["--synthetic", "--variants", "original,l2", "--devices", "1000", "--out", tmp_path / "run"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and len(lines) == 1, lines
    assert "devices=1000 is more than the 2 variant(s) of the largest program" in lines[0]
    assert "--devices 2 or fewer" in lines[0]
    assert not (tmp_path / "run").exists()


def test_default_devices_are_capped_at_the_largest_bucket():
    config = SweepConfig("t", (VariantSpec("a"), VariantSpec("b")), seeds=3)
    plan = V.plan(config.variant_specs())
    sweep.check_device_count(config, plan)  # None: no refusal
    assert len(sweep.select_devices(None, most=1)) == 1
    assert len(sweep.select_devices(None, most=2)) == min(2, len(jax.devices()))
    with pytest.raises(SweepError, match="devices=3 is more than the 2 variant"):
        sweep.check_device_count(config.replace(devices=3), plan)


# --- the memory estimate ----------------------------------------------------------------------

# The real IMDB data of the book preset (num_words 10,000; batch capacities measured with
# batches.train_capacity for 20 epochs of seed 0 and the validation set in batches of 1,024).
IMDB = dict(num_words=10_000, n_train=25_000, n_validation=25_000, eval_batch_size=1024, index_bytes=2)
IMDB_TRAIN_CAPACITY, IMDB_VALIDATION_CAPACITY = 72_704, 138_240
GB24 = 24 * 10**9


def _book_shapes(seeds: int, cpu_kernels: bool = True) -> list:
    """The book's buckets as variants.execution runs them (without the kernels, `bigger` is dense)."""
    return [
        memory.BucketShape((16, 16), seeds, 6, "sparse", False, cpu_kernels),
        memory.BucketShape((1024, 1024), seeds, 1, "sparse" if cpu_kernels else "dense", False, cpu_kernels),
    ]


def _imdb(batch_size=512, capacity=IMDB_TRAIN_CAPACITY) -> memory.DataShape:
    return memory.DataShape(
        **IMDB, batch_size=batch_size, train_capacity=capacity, validation_capacity=IMDB_VALIDATION_CAPACITY
    )


def test_estimate_lets_the_book_with_16_seeds_run_on_24_gb():
    for kernels in (True, False):
        assert memory.estimate(_book_shapes(16, kernels), _imdb()).total < GB24 / 2


def test_estimate_refuses_a_huge_batch_and_huge_widths():
    huge_batch = memory.estimate(_book_shapes(1), _imdb(batch_size=10**8, capacity=4_000_000))
    assert huge_batch.total > GB24 and huge_batch.driver == "activations"
    wide = memory.estimate([memory.BucketShape((10**6, 10**6), 1, 1, "sparse", False, True)], _imdb())
    assert wide.total > GB24 and wide.driver == "state"


def test_only_the_history_grows_with_epochs():
    short, long = (memory.estimate(_book_shapes(1), _imdb(), epochs) for epochs in (20, V.MAX_EPOCHS))
    assert (short.state, short.batches, short.activations) == (long.state, long.batches, long.activations)
    assert long.history == V.MAX_EPOCHS * 7 * memory.METRICS_PER_EPOCH * memory.HISTORY_BYTES_PER_VALUE
    assert long.total < GB24  # the book for the most epochs allowed still fits


def test_every_device_of_a_sharded_bucket_holds_the_data():
    """Configs sharded over 4 devices: state and activations are split, but each device holds the batches
    and validation data whole (replicated), so those count once per device."""
    one, four = (
        memory.bucket_estimate(memory.BucketShape((1024, 1024), 2, 4, "sparse", False, True, n_devices=n), _imdb())
        for n in (1, 4)
    )
    assert (four.state, four.activations) == (one.state, one.activations)
    assert 2.5 * one.batches < four.batches < 4 * one.batches


def test_parameter_count_is_the_models():
    count = 10_000 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    assert V.parameter_count(V.plan([VariantSpec("a", (16, 16))])[0], 10_000) == count
    state = memory.bucket_estimate(memory.BucketShape((16, 16), 1, 1, "sparse", False, True), _imdb()).state
    assert state == count * memory.FLOAT_BYTES * (memory.STATE_COPIES + 1)  # the MLP's count when none is given


def test_available_memory_prefers_device_stats(monkeypatch):
    class Device:
        platform = "gpu"

        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    both = [Device({"bytes_limit": 10, "bytes_in_use": 3}), Device({"bytes_limit": 10})]
    assert memory.available_bytes(both) == (17, "gpu memory")
    assert memory.available_bytes([Device(None)]) == (memory.host_available_bytes(), "host RAM")
    assert 0 < memory.host_available_bytes()


def test_plan_line_shows_the_estimate(tmp_path, capsys):
    config = SweepConfig("t", (VariantSpec("a", (4,)),), epochs=1, synthetic=True, batch_size=64)
    sweep.run_sweep(config, tmp_path / "run", figures=False, progress=False, stream=sys.stdout)
    out = capsys.readouterr().out
    assert " est. " in out and " GB of " in out


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--batch-size", "100000000"], "batch_size=100000000"),
        # 4096 seeds alone now train in waves (runplan.in_waves); under a limit below one model's need: refused
        (["--seeds", "4096", "--memory-limit", "300MB"], "or --seeds"),
    ],
)
def test_memory_refusal_writes_nothing(flags, fragment, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code, lines = run_cli(["--synthetic", *flags, "--out", out], capsys, monkeypatch)
    assert code == 2 and len(lines) == 1, lines
    assert "needs an estimated" in lines[0] and fragment in lines[0]
    assert not out.exists()
    assert time.perf_counter() - t0 < 60


def test_memory_refusal_names_the_widths(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (10**6, "host RAM"))
    config = SweepConfig("t", (VariantSpec("wide", (4096, 4096)),), synthetic=True)
    with pytest.raises(
        SweepError, match=r"needs an estimated .* host RAM has 0.0 GB free; .*widths up to \(4096, 4096\)"
    ):
        sweep.run_sweep(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- batch capacity: constant memory in epochs, and inert --------------------------------------


def test_capacity_streams_orders():
    lengths = np.random.default_rng(0).integers(1, 50, 300)
    orders = (batching.epoch_order(s, e, 300) for s in range(2) for e in range(5))  # a generator, one order at a time
    exact = batching.capacity(lengths, orders, 32, multiple=16)
    listed = [batching.epoch_order(s, e, 300) for s in range(2) for e in range(5)]
    assert exact == batching.capacity(lengths, listed, 32, multiple=16)
    assert batching.train_capacity(lengths, range(2), 5, 32, multiple=16) == exact
    assert exact <= batching.capacity_bound(lengths, 32, multiple=16)


def test_capacity_of_a_billion_epochs_is_prompt_and_bounded():
    lengths = np.random.default_rng(0).integers(1, 50, 300)
    t0 = time.perf_counter()
    cap = batching.train_capacity(lengths, (0, 1), 10**9, 32)
    assert time.perf_counter() - t0 < 1
    assert cap == batching.capacity_bound(lengths, 32)
    assert batching.capacity_bound(lengths, 10**8) >= int(lengths.sum())  # a batch larger than the data: one batch


def test_bucket_program_with_the_most_epochs_starts_promptly(synthetic):
    bucket = V.plan([VariantSpec("a", (4,))])[0]
    t0 = time.perf_counter()
    program = BucketProgram(bucket, synthetic, RunSettings(epochs=V.MAX_EPOCHS, batch_size=64))
    assert time.perf_counter() - t0 < 30
    assert program.capacity == batching.capacity_bound(synthetic.train.x.lengths, 64)


def _train(program, epochs):
    states = program.init()
    state, mask = states
    rows = []
    for epoch in range(epochs):
        state, metrics = program.epoch(state, mask, program.train_batches(epoch))
        rows.append(program.metrics_to_numpy(metrics))
    return jax.device_get(state), rows


@pytest.mark.parametrize("path", ["default", "xla-sparse", "dense"])
def test_batch_capacity_does_not_change_the_results(synthetic, path, monkeypatch):
    """Padding pairs are inert: a larger capacity gives the same history and state, with the CPU
    kernels (default here), XLA's sparse gather/scatter, and the dense product. To float32
    round-off (rtol 1e-6, atol 1e-7; measured: bit for bit), not bit for bit: other batch shapes
    are another compiled program. A padding pair that counted would move the results by far more."""
    if path == "xla-sparse":
        monkeypatch.setattr(runplan, "cpu_kernels_on", lambda devices: False)  # where the plan decides
    settings = RunSettings(
        epochs=2, batch_size=64, eval_batch_size=64, product="dense" if path == "dense" else "sparse"
    )
    variants = [VariantSpec("plain", (8, 8)), VariantSpec("penalized", (8, 8), l1=1e-3, dropout_rate=0.3)]
    (bucket,) = V.plan(V.with_seeds(variants, (0, 1)))  # one program for both: half the compiles
    exact = BucketProgram(bucket, synthetic, settings)
    padded = BucketProgram(bucket, synthetic, settings)
    padded.capacity = exact.capacity + 3 * batching.CAPACITY_MULTIPLE
    assert padded.train_batches(0).x.rows.shape[-1] > exact.train_batches(0).x.rows.shape[-1]
    state_a, rows_a = _train(exact, 2)
    state_b, rows_b = _train(padded, 2)
    for a, b in zip(rows_a, rows_b):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
