"""The examples in examples/ run as a user runs them (python examples/NAME.py) and report sane numbers.

Offline: digits and diabetes are scikit-learn's bundled data (the `examples` extra), own_model
and nnx_model use the synthetic generator. Here with fewer epochs and seeds than their defaults (the suite's
time); the thresholds are far from what even these short runs reach, so they fail on a broken
engine, not on another CPU's rounding.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_concurrently

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.process  # python examples/NAME.py as a user runs it


# Each example with the arguments its test runs it with. The processes run at the same time
# (a module fixture), each test reading its own: independent runs, overlapped on a multi-core machine.
RUNS = {
    "digits": ("--epochs", "10", "--seeds", "1"),
    "diabetes": ("--epochs", "80", "--seeds", "1"),
    "own_model": ("--epochs", "4", "--seeds", "1"),
    "nnx_model": ("--epochs", "4", "--seeds", "2"),
}
NEEDS_SKLEARN = ("digits", "diabetes")  # scikit-learn's bundled data


@pytest.fixture(scope="module")
def example_runs() -> dict[str, subprocess.CompletedProcess]:
    """{name: the finished `python examples/NAME.py ARGS`} for every example whose data is installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        names = [n for n in RUNS if n not in NEEDS_SKLEARN]
    else:
        names = list(RUNS)
    env = {**os.environ, "JAXREG_COMPILE_CACHE": "0", "PYTHONPATH": str(EXAMPLES.parent)}
    calls = [
        dict(
            args=[sys.executable, str(EXAMPLES / f"{n}.py"), *RUNS[n]],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        for n in names
    ]
    return dict(zip(names, run_concurrently(*calls)))


def example_output(example_runs, name: str) -> list[str]:
    out = example_runs[name]
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()


def last_value(lines: list[str], label: str) -> float:
    match = re.fullmatch(rf"{label}: (\d+\.\d+)", lines[-1])
    assert match, f"last line {lines[-1]!r} is not '{label}: <value>'"
    return float(match.group(1))


def test_digits_multiclass_width_and_dropout_sweep(example_runs):
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) provides the digits data")
    lines = example_output(example_runs, "digits")
    assert 0.85 < last_value(lines, "best validation accuracy") <= 1.0
    table = "\n".join(lines)
    assert "val acc @ best" in table and "w128_dropout" in table


def test_diabetes_regression_l2_sweep(example_runs):
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) provides the diabetes data")
    lines = example_output(example_runs, "diabetes")
    mse = last_value(lines, "best validation MSE")
    baseline = float(
        next(re.search(r"validation MSE (\d+\.\d+)", line).group(1) for line in lines if "training mean" in line)
    )
    assert mse < 0.7 * baseline, (mse, baseline)  # a model that learned something, in the target's units
    assert "val MAE @ best" in "\n".join(lines)


def test_own_model_trains_as_variants_next_to_the_study_mlp(example_runs):
    lines = example_output(example_runs, "own_model")
    assert 0.6 < last_value(lines, "best validation accuracy") <= 1.0
    programs = [line for line in lines if line.startswith("program ")]
    assert len(programs) == 4 and sum("BagMean" in p for p in programs) == 3


def test_nnx_model_trains_as_variants_one_program_per_module(example_runs):
    lines = example_output(example_runs, "nnx_model")
    assert 0.6 < last_value(lines, "best validation accuracy") <= 1.0
    programs = [line for line in lines if line.startswith("program ")]
    assert programs == [
        "program MultiHotMLP(2000, hidden=8): nnx8, nnx8_dropout, nnx8_l2 (vmap)",
        "program MultiHotMLP(2000, hidden=32): nnx32, nnx32_dropout, nnx32_l2 (vmap)",
    ]
