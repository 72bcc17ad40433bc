"""Exact zeros in the hidden kernels (jaxreg.params.exact_zero_fractions) and where they are printed.

Proximal L1 soft-thresholds the kernels, so a strong one leaves exact zeros; Keras' L1 penalty
(a subgradient in the loss) and decoupled decay only shrink, never to exactly 0. A tiny
synthetic sweep, in-process (a few seconds), and a hand-made folder with known zeros.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import flax.serialization
import numpy as np
import pytest

from jaxreg import fileio
from jaxreg.config import SweepConfig, SweepError
from jaxreg.params import exact_zero_fractions, exact_zeros_table, has_proximal_l1, load_params, params_file
from jaxreg.sweep import run_sweep
from jaxreg.variants import VariantSpec

ROOT = Path(__file__).resolve().parents[1]

CONFIG = SweepConfig(
    "zeros",
    (
        VariantSpec("original", (16, 16), learning_rate=1e-2),
        VariantSpec("l1", (16, 16), l1=1e-2, learning_rate=1e-2),
        VariantSpec("weight_decay", (16, 16), weight_decay=1.0, learning_rate=1e-2),
        VariantSpec("l1_proximal", (16, 16), l1_proximal=1.0, learning_rate=1e-2),
    ),
    epochs=3,
    seeds=2,
    batch_size=256,
    synthetic=True,
)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"jaxreg_{name}_script", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zeros") / "run"
    run_sweep(CONFIG, out, figures=False, progress=False, tensorboard=False, stream=io.StringIO())
    return out


def test_proximal_l1_gives_exact_zeros_and_penalties_do_not(finished):
    fractions = exact_zero_fractions(finished)
    assert list(fractions) == [v.name for v in CONFIG.variants]
    assert fractions["l1_proximal"] > 0.01
    assert fractions["l1"] == 0 and fractions["weight_decay"] == 0 and fractions["original"] == 0

    # the penalty did act: l1's hidden kernels are smaller than the unpenalized model's
    def mean_abs(name):
        p = load_params(finished, name)["params"]
        return np.mean([np.abs(p[k]["kernel"]).mean() for k in ("hidden_0", "hidden_1")])

    assert mean_abs("l1") < mean_abs("original")


def test_fraction_is_the_mean_over_seeds_of_each_seeds_count(finished):
    per_seed = []
    for seed in range(CONFIG.seeds):
        p = load_params(finished, "l1_proximal", seed)["params"]
        kernels = [p[k]["kernel"] for k in ("hidden_0", "hidden_1")]
        per_seed.append(sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels))
    np.testing.assert_allclose(exact_zero_fractions(finished)["l1_proximal"], np.mean(per_seed), rtol=1e-12)


def _write_folder(folder: Path, trees: dict, seeds: int, l1_proximal: float = 0.0) -> None:
    variants = [{"name": name, "l1_proximal": l1_proximal} for name in trees]
    (folder / fileio.CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / fileio.CONFIG_FILE).write_text(json.dumps({"config": {"variants": variants, "seeds": seeds}}))
    for name, per_seed in trees.items():
        for seed, tree in enumerate(per_seed):
            path = folder / params_file(name, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(flax.serialization.msgpack_serialize(tree))


def _tree(zeros_0: int, zeros_1: int) -> dict:
    """An MLP (3 words, widths (2, 2)) whose hidden kernels hold the given numbers of zeros; the
    output kernel and every bias are all zeros (they must not count)."""
    k0, k1 = np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)
    k0.ravel()[:zeros_0] = 0
    k1.ravel()[:zeros_1] = 0
    z = np.zeros
    return {
        "params": {
            "hidden_0": {"kernel": k0, "bias": z(2, np.float32)},
            "hidden_1": {"kernel": k1, "bias": z(2, np.float32)},
            "output": {"kernel": z((2, 1), np.float32), "bias": z(1, np.float32)},
        }
    }


def test_hidden_kernels_pooled_and_averaged_over_seeds(tmp_path):
    _write_folder(tmp_path, {"a": [_tree(3, 1), _tree(0, 0)], "b": [_tree(6, 4), _tree(6, 4)]}, seeds=2)
    fractions = exact_zero_fractions(tmp_path)
    assert fractions == pytest.approx({"a": (4 / 10 + 0) / 2, "b": 1.0}, rel=1e-12)
    assert not has_proximal_l1(tmp_path)
    table = exact_zeros_table(fractions)
    assert "| a " in table and "0.2000" in table and "1.0000" in table


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(SweepError, match="config.json does not exist"):
        exact_zero_fractions(tmp_path)
    _write_folder(tmp_path, {"a": [_tree(0, 0)]}, seeds=2)  # seed 1 was never written
    with pytest.raises(SweepError, match="variant 'a', seed 1"):
        exact_zero_fractions(tmp_path)


def test_report_prints_the_zeros_only_for_runs_with_proximal_l1(finished, tmp_path, capsys):
    report = _script("report")
    assert report.main([str(finished), "--out", str(tmp_path / "a"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "exact zeros in hidden kernels" in out
    zeros_table = out[out.index("exact zeros in hidden kernels") :]  # after the summary table, which has the row too
    line = next(ln for ln in zeros_table.splitlines() if ln.startswith("| l1_proximal "))
    assert float(line.split("|")[2]) == pytest.approx(exact_zero_fractions(finished)["l1_proximal"], abs=5e-5)

    no_prox = tmp_path / "no_prox"
    run_sweep(
        CONFIG.select(["original", "l1"]),
        no_prox,
        figures=False,
        progress=False,
        tensorboard=False,
        stream=io.StringIO(),
    )
    assert not has_proximal_l1(no_prox) and has_proximal_l1(finished)
    assert report.main([str(no_prox), "--out", str(tmp_path / "b"), "--no-figures"]) == 0
    assert "exact zeros" not in capsys.readouterr().out
