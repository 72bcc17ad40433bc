"""Predictions on new text from a run folder: vocabulary.json, jaxreg.predict and experiments/predict.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxreg
from jaxreg import data, fileio, outfolders
from jaxreg.dataset import densify, from_arrays
from jaxreg.errors import SweepError
from jaxreg.model import MLP
from jaxreg.params import load_params
from jaxreg.sweep import SYNTHETIC
from jaxreg.vocabulary import VOCABULARY_FILE, load_vocabulary, save_vocabulary

ROOT = Path(__file__).resolve().parents[1]


def load_cli(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(argv: list[str]) -> None:
    """experiments/sweep.py in this process (its XLA_FLAGS left as they were)."""
    flags = os.environ.get("XLA_FLAGS")
    try:
        quiet = ["--no-progress", "--no-compile-cache", "--no-figures", "--no-tensorboard"]
        assert load_cli("sweep").main([*argv, *quiet]) == 0
    finally:
        os.environ.pop("XLA_FLAGS", None) if flags is None else os.environ.__setitem__("XLA_FLAGS", flags)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished synthetic run (2 variants x 2 seeds, 2 epochs) in runs/demo/<stamp>, which runs/demo/LATEST names."""
    base = tmp_path_factory.mktemp("runs") / "demo"
    folder = outfolders.new_folder(base)
    train(["--synthetic", "--variants", "original,dropout", "--seeds", "2", "--epochs", "2", "--out", str(folder)])
    outfolders.point_latest(base, folder)
    return folder


def as_texts(x, vocabulary) -> list[str]:
    """Texts whose words are the rows' columns, in reverse order, some upper-cased, with punctuation and line breaks."""
    texts = []
    for row in np.split(x.indices, x.indptr[1:-1]):
        words = [vocabulary[i - data.FIRST_WORD] for i in row[::-1] if i >= data.FIRST_WORD]
        texts.append("<br />".join(w.upper() if k % 3 == 0 else w + "," for k, w in enumerate(words)))
    return texts


def test_the_vocabulary_is_recorded_with_the_tokenizer_settings(run_folder):
    assert VOCABULARY_FILE in fileio.read_json(run_folder / "manifest.json")["files"]
    saved = fileio.read_json(run_folder / VOCABULARY_FILE)
    expected = data.synthetic_dataset(**SYNTHETIC).vocabulary
    assert list(saved["words"]) == list(expected) and list(saved["words"].values()) == list(
        range(3, SYNTHETIC["num_words"])
    )
    assert saved["tokenizer"] == data.tokenizer_settings() and saved["num_words"] == SYNTHETIC["num_words"]
    assert saved["target"] == "binary"


def test_array_data_has_no_vocabulary(tmp_path):
    arrays = from_arrays(np.eye(6, dtype=np.float32), np.arange(6) % 2, holdout=0.5)
    assert save_vocabulary(tmp_path, arrays) is False and list(tmp_path.iterdir()) == []


def test_the_validation_texts_get_the_model_s_probabilities_on_the_validation_rows(run_folder):
    validation = data.synthetic_dataset(**SYNTHETIC).validation
    texts = as_texts(validation.x, data.synthetic_dataset(**SYNTHETIC).vocabulary)
    encoded = load_vocabulary(run_folder).encode(texts)
    np.testing.assert_array_equal(encoded.indptr, validation.x.indptr)  # the encoding round-trips
    np.testing.assert_array_equal(encoded.indices, validation.x.indices)
    for variant, seed, which, widths in (("dropout", 1, "final", (16, 16)), ("original", 0, "best", (16, 16))):
        params = load_params(run_folder, variant, seed, which)
        expected = jax.nn.sigmoid(MLP(widths).apply(params, densify(validation.x)))
        got = jaxreg.predict(run_folder, texts, variant=variant, seed=seed, which=which)
        assert got.shape == (len(texts),) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # defaults: the first variant, seed 0, best; the runs/<preset> folder names its LATEST run
    default = jaxreg.predict(run_folder.parent, texts[:5])
    np.testing.assert_allclose(default, jaxreg.predict(run_folder, texts[:5], "original", 0, "best"), rtol=1e-6)
    assert not np.allclose(default, jaxreg.predict(run_folder, texts[:5], "dropout", 1), rtol=1e-3)


def test_the_cli_prints_one_line_per_text(run_folder, capsys):
    texts = ["w3 w5 w8 w13", "W40, w41<br />an unknown word", "x" * 100]
    assert load_cli("predict").main([str(run_folder.parent), *texts, "--variant", "dropout", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    expected = jaxreg.predict(run_folder, texts, variant="dropout", seed=1)
    for line, text, probability in zip(lines, texts, expected):
        match = re.fullmatch(r'(0\.\d{4}|1\.0000)  (positive|negative)  (".*")', line)
        assert match, line
        assert float(match[1]) == pytest.approx(probability, abs=5e-5)
        assert match[2] == ("positive" if probability > 0.5 else "negative")
        assert json.loads(match[3]) == (text if len(text) <= 70 else text[:67] + "...")


def damaged(run_folder: Path, tmp_path: Path, name: str, change) -> Path:
    """A copy of the run folder whose file `name` is changed (a dict in, a dict out) or deleted (change=None)."""
    folder = shutil.copytree(run_folder, tmp_path / "copy")
    if change is None:
        (folder / name).unlink()
    else:
        fileio.write_json(folder / name, change(fileio.read_json(folder / name)))
    return folder


def own_model(config: dict) -> dict:
    config["variants"][0]["model"] = "Wide(features=3)"
    return config


@pytest.mark.parametrize(
    "case, arguments, message",
    [
        ("variant", dict(variant="bigger"), "variant 'bigger' is not in the run .*; its variants: original, dropout"),
        ("seed", dict(seed=2), r"seed=2 is not one of the run's seeds: 0, 1"),
        ("seed type", dict(seed=0.5), r"seed=0.5 is not one of the run's seeds: 0, 1"),
        ("which", dict(which="last"), r"which='last' must be one of final, best"),
        ("one string", dict(texts="a film"), r"texts must be a list of strings, not one string: pass \[text\]"),
        ("not text", dict(texts=["a film", 3]), r"texts\[1\] is a int, not a string"),
        (
            "no folder",
            dict(folder="nowhere"),
            r".*nowhere is not a run folder \(no config.json\) nor a runs/<preset> folder with a LATEST file",
        ),
        (
            "no vocabulary",
            dict(delete=VOCABULARY_FILE),
            r".* has no vocabulary.json, so new text cannot be encoded for its models: .*",
        ),
        (
            "no parameters",
            dict(delete="params/original/seed_0.best.msgpack"),
            r"no best parameters for variant 'original', seed 0: .*",
        ),
        (
            "task",
            dict(change=(VOCABULARY_FILE, lambda v: {**v, "target": "regression"})),
            r"predict is for binary tasks only; the run in .* has a regression task",
        ),
        (
            "tokenizer",
            dict(change=(VOCABULARY_FILE, lambda v: {**v, "tokenizer": {**v["tokenizer"], "version": 9}})),
            r".* was written with tokenizer version 9 \(format 1\); this jaxreg .*",
        ),
        (
            "own model",
            dict(change=(fileio.CONFIG_FILE, own_model)),
            r"variant 'original' is an own model \(Wide\(features=3\)\): predict applies the study.s MLP only; .*",
        ),
    ],
)
def test_what_cannot_be_predicted_is_one_line(run_folder, tmp_path, capsys, case, arguments, message):
    folder = run_folder
    if "delete" in arguments:
        folder = damaged(run_folder, tmp_path, arguments.pop("delete"), None)
    if "change" in arguments:
        folder = damaged(run_folder, tmp_path, *arguments.pop("change"))
    if "folder" in arguments:
        folder = tmp_path / arguments.pop("folder")
    texts = arguments.pop("texts", ["a film"])
    with pytest.raises(SweepError) as raised:
        jaxreg.predict(folder, texts, **arguments)
    assert re.fullmatch(message, str(raised.value)), str(raised.value)
    if isinstance(texts, list) and all(isinstance(t, str) for t in texts):  # the command line says it too, in one line
        flags = [f"--{k}={v}" for k, v in arguments.items()]
        try:
            status = load_cli("predict").main([str(folder), *texts, *flags])
        except SystemExit as e:  # a flag argparse refuses (--seed=0.5, --which=last)
            status = e.code
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and err.startswith("predict.py: error: "), err


@pytest.mark.slow
def test_the_book_s_original_model_reads_new_reviews(imdb_archive, tmp_path):
    """Trained on IMDB for 3 epochs, the book's `original` model finds a clearly positive review positive and a
    clearly negative one negative."""
    run = tmp_path / "run"
    train(["--data", str(imdb_archive), "--variants", "original", "--seeds", "1", "--epochs", "3", "--out", str(run)])
    positive = "One of the best films I have ever seen. Brilliant acting, a wonderful story, I loved every minute."
    negative = "The worst movie I have ever seen. Boring, stupid and a complete waste of time."
    p_positive, p_negative = jaxreg.predict(run, [positive, negative])
    assert p_positive > 0.5 > p_negative, (p_positive, p_negative)
    vocabulary = load_vocabulary(run)
    assert (
        vocabulary.num_words == 10_000 and vocabulary.words["the"] == 3
    )  # Keras' offsets: the most frequent word is 3
