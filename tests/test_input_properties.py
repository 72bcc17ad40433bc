"""Property-based tests (hypothesis) of the input checks: for arbitrary values (inf, nan, huge,
negative, bools, strings, float32-overflowing numbers) VariantSpec, RunSettings, SweepConfig,
load_imdb and experiments/sweep.py either accept and keep the value, or refuse it with their
documented error type and a message that names the field and value; never another exception.
"""

from __future__ import annotations

import contextlib
import fractions
import importlib.util
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_fake_imdb
from jaxreg import variants as V
from jaxreg.config import MAXIMA, SweepConfig, SweepError
from jaxreg.data import MAX_NUM_WORDS, DataError, load_imdb
from jaxreg.sweep import check_device_count
from jaxreg.variants import RunSettings, VariantError, VariantSpec

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
FEW = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT32_MAX = float(np.finfo(np.float32).max)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -1e39, 3.4e38, 3.5e38, 1e300, 1e-50, 0.0, -0.0, 0.99999999, 1.0]),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.fractions(max_denominator=1000),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.builds(np.float32, st.floats(width=32)),
)
integers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**31 - 2, 2**31 - 1, 2**31, 10**6, 10**6 + 1, 4096, 4097]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.builds(np.int64, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _real(value) -> bool:
    return isinstance(value, (int, float, fractions.Fraction, np.floating, np.integer)) and not isinstance(value, bool)


def _names(message: str, field: str, value) -> bool:
    """Whether the message names field=value (a NumPy int may be shown as the plain int it becomes)."""
    shown = [repr(value)] + ([repr(int(value))] if isinstance(value, np.integer) else [])
    return any(f"{field}={v}" in message for v in shown)


@pytest.mark.parametrize("field", ["l1", "l2", "weight_decay", "l1_proximal", "learning_rate", "dropout_rate"])
@FEW
@given(value=numbers)
def test_variant_spec_numbers(field, value):
    try:
        spec = VariantSpec("v", **{field: value})
    except VariantError as e:
        assert _names(str(e), field, value), str(e)
        return
    kept = getattr(spec, field)
    assert _real(value) and kept == float(value)
    assert math.isfinite(kept) and np.isfinite(np.float32(kept))  # trains without overflow
    if field == "learning_rate":
        assert np.float32(kept) > 0
    elif field == "dropout_rate":
        assert 0 <= np.float32(kept) < 1
    else:
        assert kept >= 0


@FEW
@given(seed=integers)
def test_variant_spec_seed(seed):
    try:
        spec = VariantSpec("v", seed=seed)
    except VariantError as e:
        assert _names(str(e), "seed", seed), str(e)
        assert not (_is_int(seed) and 0 <= seed < 2**32)
        return
    assert _is_int(seed) and 0 <= spec.seed == seed < 2**32


@FEW
@given(
    widths=st.one_of(st.lists(st.integers(min_value=-3, max_value=2**17), max_size=4).map(tuple), integers, st.none())
)
def test_variant_spec_widths(widths):
    try:
        spec = VariantSpec("v", widths=widths)
    except VariantError as e:
        assert "widths=" in str(e), str(e)
        return
    if widths is None:  # the study's MLP at its default widths
        assert spec.widths == V.DEFAULT_WIDTHS
        return
    assert isinstance(widths, tuple) and spec.widths == widths and all(1 <= w <= V.MAX_WIDTH for w in widths)


@pytest.mark.parametrize("field", ["epochs", "batch_size", "eval_batch_size"])
@FEW
@given(value=integers)
def test_run_settings_counts(field, value):
    most = V.MAX_EPOCHS if field == "epochs" else V.MAX_BATCH_SIZE
    try:
        settings_ = RunSettings(**{field: value})
    except ValueError as e:
        assert f"RunSettings.{field} " in str(e) and repr(value) in str(e)
        assert not (_is_int(value) and 1 <= value <= most)
        return
    assert _is_int(value) and getattr(settings_, field) == value and 1 <= value <= most


@pytest.mark.parametrize("field", ["epochs", "seeds", "batch_size", "holdout_size", "devices"])
@FEW
@given(value=integers)
def test_sweep_config_counts(field, value):
    base = SweepConfig("t", (VariantSpec("original"),))
    try:
        config = base.replace(**{field: value})
    except SweepError as e:
        assert _names(str(e), field, value), str(e)
        assert not (_is_int(value) and 1 <= value <= MAXIMA[field])
        return
    assert _is_int(value) and getattr(config, field) == value and 1 <= value <= MAXIMA[field]


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory) -> Path:
    return write_fake_imdb(tmp_path_factory.mktemp("fake"))


@FEW
@given(num_words=st.one_of(integers, st.integers(min_value=MAX_NUM_WORDS - 2, max_value=MAX_NUM_WORDS + 2)))
def test_load_imdb_num_words(fake_archive, num_words):
    try:
        dataset = load_imdb(fake_archive, num_words=num_words, use_cache=False)
    except DataError as e:
        assert _names(str(e), "num_words", num_words), str(e)
        assert not (_is_int(num_words) and 4 <= num_words <= MAX_NUM_WORDS)
        return
    assert dataset.num_words == num_words and 4 <= num_words <= MAX_NUM_WORDS


@pytest.mark.parametrize("field", ["holdout_size", "seed"])
@FEW
@given(value=integers)
def test_load_imdb_holdout_arguments(fake_archive, field, value):
    try:
        dataset = load_imdb(
            fake_archive,
            validation="holdout",
            **{field: value},
            **({"holdout_size": 2} if field == "seed" else {}),
            use_cache=False,
        )
    except DataError as e:
        assert repr(value) in str(e) or field == "holdout_size" and "holdout_size=" in str(e), str(e)
        return
    assert _is_int(value) and len(dataset.validation) == (value if field == "holdout_size" else 2)


@pytest.fixture(scope="module")
def no_data_folder(tmp_path_factory) -> Path:
    """An empty folder: no relative path resolves to IMDB data there."""
    return tmp_path_factory.mktemp("no_data")


@FEW
@given(path=st.one_of(st.text(max_size=12), st.binary(max_size=4), integers, st.none()))
def test_load_imdb_paths(path, no_data_folder):
    """Any path where there is no IMDB data (empty, missing, not aclImdb, not a str, None without
    JAXREG_DATA) is one DataError of one line, never another exception and never a dataset."""
    os.environ.pop("JAXREG_DATA", None)
    here = os.getcwd()
    os.chdir(no_data_folder)
    try:
        with pytest.raises(DataError) as refused:
            load_imdb(path, use_cache=False)
    finally:
        os.chdir(here)
    message = str(refused.value)
    assert message.strip() and "\n" not in message.strip(), message


# --- experiments/sweep.py: flags -> config -------------------------------------------------------


def _load_cli():
    spec = importlib.util.spec_from_file_location("sweep_cli_properties", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()
FLAGS = {
    "--epochs": "epochs",
    "--seeds": "seeds",
    "--batch-size": "batch_size",
    "--holdout-size": "holdout_size",
    "--devices": "devices",
}


def _main(argv) -> tuple[int, list[str]]:
    """CLI main in-process with stderr captured and XLA_FLAGS restored: (exit status, stderr lines)."""
    err, flags = io.StringIO(), os.environ.get("XLA_FLAGS")
    try:
        with contextlib.redirect_stderr(err):
            try:
                code = CLI.main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        if flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = flags
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize("flag", list(FLAGS))
@FEW
@given(
    text=st.one_of(
        st.integers(min_value=-(10**12), max_value=10**12).map(str),
        st.text(max_size=6),
        st.sampled_from(["1e3", "0x10", "inf", "nan", "", " 7 ", "2147483647", "1000001", "4097"]),
    )
)
def test_cli_flag_values(flag, text):
    """A flag value is accepted into the config unchanged, or main() exits 2 with one line."""
    argv = ["--synthetic", "--variants", "original", f"{flag}={text}"]
    field = FLAGS[flag]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            config = CLI.build_config(CLI.parse_args(argv))
        check_device_count(config, V.plan(config.variant_specs()))
    except (SystemExit, SweepError):
        code, lines = _main([*argv, "--out", os.devnull + "/never"])
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sweep.py: error: "), lines
        return
    assert getattr(config, field) == int(text) and 1 <= int(text) <= MAXIMA[field]
