"""The reproducibility contract (docs/reproducibility.md, "What holds, and how it is tested"), checked
across processes and instruction sets.

A small study (a penalized and a dropout 16-unit model, a padded 6-unit one, 2 seeds, 3
epochs on synthetic data) runs in this process and again in subprocesses: with the same
XLA flags it must give the same histories bit for bit; with XLA compiling for another
instruction set (machine.second_instruction_set(), or the CPU's own where this process is
already held to a lower one) it must agree to CROSS_ISA_RTOL / CROSS_ISA_ATOL.

Run as a script (`python tests/test_reproducibility.py OUT.npz`) it writes the histories.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jaxreg import machine
from jaxreg.data import synthetic_dataset
from jaxreg.variants import RunSettings, VariantSpec, run, with_seeds

pytestmark = [pytest.mark.numerics, pytest.mark.process]  # reruns in new processes

VARIANTS = [
    VariantSpec("l1_l2", (16, 16), l1=1e-4, l2=1e-3),
    VariantSpec("dropout", (16, 16), dropout_rate=0.5),
    VariantSpec("smaller", (6, 6)),
]
SETTINGS = RunSettings(epochs=3, batch_size=128, eval_batch_size=128)
# Across instruction sets every operation may round differently (other vector widths, other
# fused multiply-adds) and training amplifies it: measured after these 3 epochs on AMD EPYC
# (Zen 3) between AVX2 and AVX (no FMA), and AVX2 and SSE4.2, at most 1.8e-7 relative (1.2e-7
# absolute), accuracies equal; asserted with a wide margin (a real change of semantics moves
# them by 1e-3 or more). Accuracies may differ by a review or two near the decision boundary.
CROSS_ISA_RTOL, CROSS_ISA_ATOL = 1e-5, 1e-7
ACCURACY_ATOL = 2 / 300  # two of the 300 validation reviews (or 1000 training reviews)


def histories() -> dict[str, np.ndarray]:
    """{"name/seed/metric": values per epoch} of the small study."""
    dataset = synthetic_dataset(n_train=1000, n_validation=300, num_words=1000, seed=0)
    out = {}
    for (name, seed), h in run(with_seeds(VARIANTS, [0, 1]), dataset, SETTINGS).history.items():
        for metric, values in h.items():
            out[f"{name}/{seed}/{metric}"] = np.asarray(values)
    return out


def _in_subprocess(tmp_path, xla_flags: str, label: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"{label}.npz"
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    with np.load(out) as saved:
        return {k: saved[k] for k in saved.files}


def _other_instruction_set_flags() -> str:
    flags = os.environ.get("XLA_FLAGS", "")
    if machine.xla_max_instruction_set(flags):  # already held to a lower set: compare with the CPU's own
        return re.sub(r"--xla_cpu_max_isa=\S+", "", flags).strip()  # XLA reads a blank value as a file name
    return f"{flags} --xla_cpu_max_isa={machine.second_instruction_set()}"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The study here, and at the same time in two subprocesses: with this process' XLA flags, and with the other
    instruction set ({"here", "rerun", "other_isa"})."""
    tmp = tmp_path_factory.mktemp("reproducibility")
    with ThreadPoolExecutor(2) as pool:
        rerun = pool.submit(_in_subprocess, tmp, os.environ.get("XLA_FLAGS", ""), "rerun")
        other = pool.submit(_in_subprocess, tmp, _other_instruction_set_flags(), "other_isa")
        here = histories()
        return {"here": here, "rerun": rerun.result(), "other_isa": other.result()}


def test_a_rerun_in_a_new_process_is_bit_identical(studies):
    here, again = studies["here"], studies["rerun"]
    assert set(again) == set(here)
    for key, values in here.items():
        assert np.array_equal(again[key], values), key


def test_another_instruction_set_agrees_to_the_stated_tolerance(studies):
    here, other = studies["here"], studies["other_isa"]
    assert set(other) == set(here)
    for key, values in here.items():
        assert np.all(np.isfinite(values)), key
        if key.endswith("accuracy"):
            np.testing.assert_allclose(other[key], values, rtol=0, atol=ACCURACY_ATOL, err_msg=key)
        else:
            np.testing.assert_allclose(other[key], values, rtol=CROSS_ISA_RTOL, atol=CROSS_ISA_ATOL, err_msg=key)


if __name__ == "__main__":
    np.savez(sys.argv[1], **histories())
