"""load_imdb(source="tfds") and `--data tfds` on tensorflow-datasets' offline mock data
(tfds.testing.mock_data: random reviews, nothing downloaded).

The mock reviews go through the real reading and encoding: they give the same Dataset as the same
texts written as an aclImdb archive, a second load comes from the cache, and the command line runs on
them. Without tensorflow-datasets these tests skip (the reason names the package), except the one
that checks the command line's one-line error for the missing package.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data import reference_multi_hot, reference_tokens

from conftest import load_script
from jaxreg import data
from jaxreg.data import DataError, densify, load_imdb

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
needs_tfds = pytest.mark.skipif(
    not HAS_TFDS, reason='needs the package tensorflow-datasets (pip install "jaxreg[tfds]")'
)
N_MOCK = 24  # mock reviews per split; both labels occur among them


def mock_reviews(tfds) -> dict[str, list[tuple[int, str]]]:
    """{split: [(label, text), ...]} in tfds' order, read straight from tfds (call inside mock_data)."""
    out = {}
    for split in ("train", "test"):
        ds = tfds.as_numpy(tfds.load("imdb_reviews", split=split, batch_size=7, as_supervised=True))
        out[split] = [(int(label), text.decode("utf-8")) for texts, labels in ds for text, label in zip(texts, labels)]
    return out


@pytest.fixture
def tfds():
    import tensorflow_datasets

    with tensorflow_datasets.testing.mock_data(num_examples=N_MOCK):
        yield tensorflow_datasets


@needs_tfds
def test_mock_reviews_are_encoded_like_the_archive(tfds, tmp_path, make_fake_imdb):
    reviews = mock_reviews(tfds)
    assert all(len(r) == N_MOCK and {lab for lab, _ in r} == {0, 1} for r in reviews.values())
    d = load_imdb(source="tfds", num_words=40, cache_dir=tmp_path)
    assert d.protocol == "test-as-validation" and d.target == "binary" and d.checksum.startswith("tfds:")
    assert (len(d.train), len(d.validation)) == (N_MOCK, N_MOCK)

    # The vocabulary ranks the train tokens by count, descending, ties alphabetical (written out here).
    counts = collections.Counter(tok for _, text in reviews["train"] for tok in reference_tokens(text))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[: 40 - data.FIRST_WORD]
    assert d.vocabulary == tuple(ranked)
    for split, name in [(d.train, "train"), (d.validation, "test")]:
        ordered = sorted(reviews[name], key=lambda r: r[0])  # neg before pos, tfds order within (stable sort)
        np.testing.assert_array_equal(split.y, [lab for lab, _ in ordered])
        np.testing.assert_array_equal(densify(split.x), reference_multi_hot([t for _, t in ordered], d.vocabulary, 40))

    # The same texts as an aclImdb archive (ids = tfds positions) give the same arrays.
    as_files = {
        (split, label_name): {i: text for i, (lab, text) in enumerate(reviews[split]) if lab == label}
        for split in ("train", "test")
        for label, label_name in enumerate(("neg", "pos"))
    }
    archive = load_imdb(make_fake_imdb(as_files), num_words=40, use_cache=False)
    assert archive.vocabulary == d.vocabulary
    for a, b in [(archive.train, d.train), (archive.validation, d.validation)]:
        for u, v in [(a.x.indptr, b.x.indptr), (a.x.indices, b.x.indices), (a.y, b.y)]:
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


@needs_tfds
def test_second_load_comes_from_the_cache(tfds, tmp_path, monkeypatch):
    first = load_imdb(source="tfds", num_words=30, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("imdb-*.npz"))) == 1

    def no_encoding(*args):
        raise AssertionError("a cache hit must not encode the reviews again")

    monkeypatch.setattr(data, "_encode", no_encoding)
    again = load_imdb(source="tfds", num_words=30, cache_dir=tmp_path)
    assert again.checksum == first.checksum and again.vocabulary == first.vocabulary
    for a, b in [(again.train, first.train), (again.validation, first.validation)]:
        np.testing.assert_array_equal(a.x.indices, b.x.indices)
        np.testing.assert_array_equal(a.y, b.y)
    held = load_imdb(source="tfds", num_words=30, cache_dir=tmp_path, validation="holdout", holdout_size=5, seed=1)
    assert (len(held.train), len(held.validation), held.protocol) == (N_MOCK - 5, 5, "holdout")


@needs_tfds
def test_a_tfds_failure_is_one_data_error(tfds, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host\nmore lines")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(
        DataError, match=r"could not load imdb_reviews \(ConnectionError: no route to host\); .*internet"
    ):
        load_imdb(source="tfds", use_cache=False)


def _load_cli():
    return load_script(SWEEP, "sweep_cli")


def test_cli_data_tfds_without_the_package_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tfds").write_text("a file named tfds in the current folder is not what --data tfds means")
    code = _load_cli().main(["--data", "tfds", "--no-progress", "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("sweep.py: error: ") and 'pip install "jaxreg[tfds]"' in lines[0]
    assert not (tmp_path / "run").exists()


TWO_EPOCHS = '''"""Two small models, two epochs: python experiments/sweep.py --preset two.py --data tfds"""

from jaxreg.sweep import SweepConfig
from jaxreg.variants import VariantSpec


def get_config():
    return SweepConfig(name="two", variants=(VariantSpec("a", (4,)), VariantSpec("b", (4,), l2=1e-3)), epochs=2, batch_size=8)
'''


@needs_tfds
def test_cli_runs_on_tfds_mock_data(tfds, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXREG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices sets it; restored after
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.py").write_text(TWO_EPOCHS)
    args = [
        "--preset",
        "two.py",
        "--data",
        "tfds",
        "--devices",
        "1",
        "--no-progress",
        "--no-figures",
        "--no-tensorboard",
    ]
    code = _load_cli().main([*args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    from jaxreg import runs

    run = runs.load_run(tmp_path / "run")
    assert run.config["config"]["data"] == "tfds"
    assert set(run.histories) == {"a", "b"}
    assert all(np.isfinite(h["val_loss"]).all() and h["val_loss"].shape == (1, 2) for h in run.histories.values())
