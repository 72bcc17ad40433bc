"""Hostile input, round two (issue #23): names that cannot reach the file system, an archive that repeats
its members, class counts and nested index lists in `from_arrays`, own-model mistakes, `load_params`'
seed, preset files that exit, and the note of a process given another --out. Each is one line naming
the argument, before anything is written or allocated. All in-process and small.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import sys
import tarfile
import time
from pathlib import Path

import flax.linen as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg
from jaxreg import agreement, distributed
from jaxreg.config import SweepConfig, SweepError
from jaxreg.data import load_imdb
from jaxreg.dataset import MAX_CLASSES, DataError, from_arrays
from jaxreg.networks import Network, parameter_shapes
from jaxreg.params import load_params, params_file
from jaxreg.specs import MAX_NAME_LENGTH, SAFE_NAME, VariantError, VariantSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import presets  # noqa: E402

# --- names ------------------------------------------------------------------------------------

NAME_CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs",))


def _accepted(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name)) and len(name) <= MAX_NAME_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(NAME_CHARACTERS, max_size=12), st.text("abA1._+=-/\\ ,", max_size=12), st.just("x" * 101)))
def test_a_variant_name_is_a_safe_file_name_or_refused_in_one_line(name):
    if not _accepted(name):
        with pytest.raises(VariantError) as raised:
            VariantSpec(name)
        assert "\n" not in str(raised.value) and str(raised.value).startswith("variant name ")
        return
    spec = VariantSpec(name)
    file = params_file(spec.name, 0)
    # one file name, the name itself (so two names never share one), one folder below params/, never . or ..
    assert file == f"params/{name}/seed_0.final.msgpack"
    assert posixpath.normpath(file).startswith("params/") and name not in (".", "..")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(NAME_CHARACTERS, max_size=12), st.text("ab1./ ", max_size=8)))
def test_a_config_name_keeps_its_run_folder_under_runs(name):
    variants = (VariantSpec("a"),)
    if not _accepted(name):
        with pytest.raises(SweepError, match="^config name "):
            SweepConfig(name, variants)
        return
    folder = os.path.normpath(os.path.join("runs", SweepConfig(name, variants).name))
    assert os.path.dirname(folder) == "runs"  # experiments/sweep.py's runs/<config name>/...


@pytest.mark.parametrize("name", ["..", ".", "a/", "../x", "a/../b", ".hidden", "-flag", "a b", "a,b", "x" * 101, ""])
def test_the_names_of_the_issue_are_refused_before_anything(name):
    with pytest.raises(VariantError, match="^variant name"):
        VariantSpec(name)
    with pytest.raises(SweepError, match="^config name"):
        SweepConfig(name, (VariantSpec("a"),))


def test_names_equal_but_for_case_are_one_file_somewhere_and_refused():
    with pytest.raises(SweepError, match=r"differ only in case \[\['A', 'a'\]\]"):
        SweepConfig("t", (VariantSpec("A"), VariantSpec("a"), VariantSpec("b")))


def test_every_preset_name_and_generated_variant_name_passes():
    for preset in presets.PRESETS:
        config = presets.load(preset)
        assert all(_accepted(v.name) for v in config.variants) and _accepted(config.name)
    for name in ("l1_l2", "bigger_n500", "l2_0.001", "weight_decay_1e-05", "l2=0.001", "original_noise0.2", "v16x16_0"):
        assert VariantSpec(name).name == name


def _run_cli(argv, capsys, monkeypatch) -> tuple[int, list[str]]:
    """experiments/sweep.py's main in-process: (exit status, non-empty stderr lines)."""
    import importlib.util

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    spec = importlib.util.spec_from_file_location("sweep_cli_hostile", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


HEAD = "from jaxreg.sweep import SweepConfig\nfrom jaxreg.variants import VariantSpec\nimport sys\n"
PRESET_CASES = {
    "variant ..": (
        HEAD + "def get_config():\n    return SweepConfig('x', (VariantSpec('..'),))\n",
        "variant name '..'",
    ),
    "config ../x": (
        HEAD + "def get_config():\n    return SweepConfig('../x', (VariantSpec('a'),))\n",
        "config name '../x'",
    ),
    "exits while loading": (HEAD + "sys.exit(0)\n", r"line 4: called sys.exit\(0\)"),
    "get_config exits": (HEAD + "def get_config():\n    sys.exit(0)\n", r"line 5: get_config\(\) called sys.exit\(0\)"),
}


@pytest.mark.parametrize("case", PRESET_CASES)
def test_a_preset_with_a_bad_name_or_an_exit_is_one_line_exit_2_nothing_written(case, tmp_path, monkeypatch, capsys):
    text, match = PRESET_CASES[case]
    path = tmp_path / "hostile.py"
    path.write_text(text)
    with pytest.raises(SweepError, match=match):
        presets.load(str(path))
    monkeypatch.chdir(tmp_path)  # a default run folder would go to runs/ here
    code, lines = _run_cli(["--preset", path, "--synthetic"], capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sweep.py: error: preset file"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.py"]  # no runs/, no lock


# --- an archive whose members repeat -----------------------------------------------------------


def _repeated(archive: Path, out: Path, rename=lambda name: name) -> Path:
    """A copy of a .tar.gz archive with every member stored twice (the second time under rename(name))."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(out, "w:gz") as tar:
        for once in (lambda n: n, rename):
            for member, data in members:
                info = tarfile.TarInfo(once(member.name))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


def test_an_archive_holding_its_reviews_twice_is_refused_in_one_line(make_fake_imdb, tmp_path):
    archive = make_fake_imdb()
    train = load_imdb(archive, use_cache=False).train
    twice = _repeated(archive, tmp_path / "twice.tar.gz")
    with pytest.raises(DataError, match=r"holds the review 'aclImdb/.*\.txt' twice \(again\)") as raised:
        load_imdb(twice, use_cache=False)
    assert "\n" not in str(raised.value) and len(train) > 0
    moved = _repeated(archive, tmp_path / "moved.tar.gz", rename=lambda n: "copy/" + n)  # the same review at two paths
    with pytest.raises(DataError, match=r"twice \(also as 'copy/aclImdb/"):
        load_imdb(moved, use_cache=False, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


# --- from_arrays: class counts and nested index lists -------------------------------------------


X4 = np.zeros((4, 3), np.float32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y=[0, 1, 0, 1], num_classes=2**31 - 1), r"^num_classes=2147483647 is more than the 65,536 classes"),
        (dict(y=[0, 1, 0, 1], num_classes=MAX_CLASSES + 1), r"^num_classes=65537 is more than"),
        (dict(y=[0, 1, 2**31 - 2, 1]), r"^y holds the label 2147483646, so 2,147,483,647 classes is more than"),
        (dict(y=[0, 1, 0, 1], validation=(X4, [0, 70_000, 1, 1])), r"^validation\[1\] holds the label 70000"),
    ],
)
def test_too_many_classes_are_refused_at_once_naming_the_argument(kwargs, match):
    start = time.perf_counter()
    with pytest.raises(DataError, match=match) as raised:
        from_arrays(X4, **kwargs)
    assert "\n" not in str(raised.value) and time.perf_counter() - start < 5


def test_the_largest_class_count_is_accepted():
    assert from_arrays(X4, [0, 1, 0, 1], num_classes=MAX_CLASSES).num_classes == MAX_CLASSES


def test_a_huge_column_index_is_refused_by_run_before_anything_is_allocated():
    """A column index near 2**31 makes 2**31 input columns: the first layer alone would take about 140 GB."""
    data = from_arrays([[1, 2], [2**31 - 2], [3], [4]], [0, 1, 0, 1], validation=([[1]], [1]))
    start = time.perf_counter()
    with pytest.raises(VariantError, match=r"^run: the variants need an estimated .* GB but .* free") as raised:
        jaxreg.run([jaxreg.VariantSpec("a", (16, 16))], data, jaxreg.RunSettings(epochs=1))
    assert "num_words=2147483647" in str(raised.value) and "\n" not in str(raised.value)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "x, arg",
    [
        ([[[1, 2]]] * 4, "x[0]"),
        ([[[1, 2], [3]]] * 4, "x[0]"),
        ([[1, [2]]] * 4, "x[0]"),
        ([[[]]] * 4, "x[0]"),
        ([[1], [2], [[3, 4]], [5]], "x[2]"),
    ],
)
def test_nested_index_lists_are_one_line_naming_the_row(x, arg):
    with pytest.raises(DataError, match=rf"^{re.escape(arg)} must be a flat list of integer column indices"):
        from_arrays(x, [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"^validation\[0\]\[0\] must be a flat list"):
        from_arrays([[1], [2]], [0, 1], validation=([[[1, 2]]], [0]))


# --- own models -------------------------------------------------------------------------------


class Three(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


class One(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1)(x)[:, 0]


class FourArguments(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x, mask, scale):
        return nn.Dense(1)(x)


def test_a_model_class_instead_of_an_instance_is_refused_at_construction():
    with pytest.raises(
        VariantError,
        match=r"^variant 'own': model=Three \(a class\) is not a usable model .*pass an instance, Three\(\.\.\.\)",
    ):
        VariantSpec("own", model=Three)


def test_a_call_signature_jaxreg_cannot_call_is_refused_at_construction():
    with pytest.raises(VariantError) as raised:
        VariantSpec("own", model=FourArguments())
    message = str(raised.value)
    assert "\n" not in message and message.startswith("variant 'own': model=a FourArguments is not a usable model")
    assert "needs mask, scale, which jaxreg does not pass" in message
    with pytest.raises(TypeError, match=r"cannot be called as apply_fn\(params, x, dropout_rate, dropout_key\)"):
        Network(init_fn=lambda key, x: {}, apply_fn=lambda params, x: x)


def test_outputs_that_do_not_fit_the_task_are_one_line_before_training():
    binary = from_arrays(np.random.default_rng(0).random((8, 5)), [0, 1] * 4)
    with pytest.raises(SweepError) as raised:
        jaxreg.run([VariantSpec("own", model=Three())], binary)
    assert str(raised.value) == (
        "model Three() returns outputs of shape (1, 3) for a batch of 1; the data needs one output per example "
        "([batch] or [batch, 1]): a binary or regression task"
    )
    with pytest.raises(SweepError, match=r"shape \(1,\) for a batch of 1; the data needs 3 outputs per example"):
        parameter_shapes(Network(One()), 5, 3)
    assert parameter_shapes(Network(Three()), 5, 3)["params"]["Dense_0"]["kernel"].shape == (5, 3)
    assert parameter_shapes(Network(One()), 5, 1)["params"]["Dense_0"]["kernel"].shape == (5, 1)


# --- load_params' seed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=0.9), r"^seed=0\.9 must be an integer"),
        (dict(seed=True), r"^seed=True must be an integer"),
        (dict(seed=-1), r"^seed=-1 must be an integer"),
        (dict(variant=3), r"^variant=3 must be"),
        (dict(which="last"), r"^which='last' must be one of"),
    ],
)
def test_load_params_refuses_a_seed_that_is_not_an_integer(tmp_path, kwargs, match):
    arguments = {"variant": "a", "seed": 0, "which": "final", **kwargs}
    with pytest.raises(SweepError, match=match):
        load_params(tmp_path, **arguments)


# --- a process given another --out ------------------------------------------------------------


@pytest.mark.parametrize("its_out, differs", [("runs/zero", True), ("runs/mine", False)])
def test_a_process_given_another_out_names_process_0s_folder(monkeypatch, tmp_path, its_out, differs):
    """Process 1's line before training (`agreement.training_note`) names process 0's folder, not its own."""
    monkeypatch.chdir(tmp_path)
    zero = json.dumps({"given": its_out, "absolute": os.path.abspath(its_out)}).encode()
    monkeypatch.setattr(distributed, "is_writer", lambda: False)
    monkeypatch.setattr(distributed, "broadcast_bytes", lambda data: zero)
    monkeypatch.setattr(distributed, "describe", lambda: "process 1 of 2")
    note = agreement.training_note(Path("runs/mine"))
    assert note.startswith(f"process 1 of 2: training with process 0, which writes {tmp_path / its_out}")
    assert ("different --out, runs/mine, which it does not use" in note) == differs
