"""Tests of jaxreg.data: the real IMDB archive (via the session fixture) and small fake aclImdb data."""

from __future__ import annotations

import collections
import hashlib
import re
import sys
import tarfile
import warnings

import chex
import numpy as np
import pytest

from jaxreg import batches, data
from jaxreg.data import (
    FIRST_WORD,
    OOV,
    START,
    DataError,
    SparseMultiHot,
    densify,
    load_imdb,
    synthetic_dataset,
)


def reference_tokens(text: str) -> list[str]:
    """The tokenizer rules, written out independently of jaxreg.data."""
    text = text.lower()
    for br in ("<br />", "<br/>", "<br>"):
        text = text.replace(br, " ")
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text)


def reference_multi_hot(texts, vocabulary, num_words) -> np.ndarray:
    index = {word: i + FIRST_WORD for i, word in enumerate(vocabulary)}
    out = np.zeros((len(texts), num_words), np.float32)
    for row, text in enumerate(texts):
        out[row, START] = 1
        for token in reference_tokens(text):
            out[row, index.get(token, OOV)] = 1
    return out


def assert_csr_valid(x: SparseMultiHot):
    lengths = np.diff(x.indptr)
    assert x.indptr.dtype == np.int64 and x.indices.dtype == (np.int16 if x.num_words <= 32767 else np.int32)
    assert (lengths >= 1).all()
    assert (x.indices[x.indptr[:-1]] == START).all(), "START must be the first (smallest) index of every row"
    assert x.indices.min() >= START and x.indices.max() < x.num_words
    within_row = np.ones(x.indices.size - 1, bool)
    within_row[x.indptr[1:-1] - 1] = False
    assert (np.diff(x.indices.astype(np.int64))[within_row] > 0).all(), "rows must be sorted and unique"


# --- the real archive -----------------------------------------------------------------


def test_archive_matches_published_sha256(imdb_archive):
    sha_file = imdb_archive.with_name(imdb_archive.name + ".sha256")
    if not sha_file.is_file():
        pytest.skip(f"no {sha_file.name} beside the archive")
    expected = sha_file.read_text().split()[0]
    assert hashlib.sha256(imdb_archive.read_bytes()).hexdigest() == expected


def test_real_sizes_labels_and_encoding(imdb, imdb_archive):
    assert imdb.protocol == "test-as-validation" and imdb.num_words == 10_000
    assert (imdb.train.name, imdb.validation.name) == ("train", "test")
    assert len(imdb.vocabulary) == imdb.num_words - FIRST_WORD
    assert imdb.vocabulary[0] == "the"
    for split in (imdb.train, imdb.validation):
        assert len(split) == 25_000
        chex.assert_shape(split.y, (25_000,))
        assert split.y.dtype == np.float32 and set(np.unique(split.y)) == {0.0, 1.0}
        assert split.y.sum() == 12_500
        assert_csr_valid(split.x)
    assert imdb.train.x.nbytes + imdb.validation.x.nbytes < 100e6
    assert imdb.checksum == hashlib.sha256(imdb_archive.read_bytes()).hexdigest()


def test_describe_says_test_set_is_validation(imdb):
    text = imdb.describe()
    assert "TEST set is used as the validation set" in text
    assert "25,000" in text


@pytest.fixture(scope="module")
def raw_sample(imdb_archive):
    """A few raw reviews read straight from the archive: {(split, row): text}, row as in the sorted order."""
    wanted_ids = {0, 1, 7, 4321, 12499}
    names, texts = collections.defaultdict(list), {}
    with tarfile.open(imdb_archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 4 or parts[1] not in ("train", "test") or not parts[3].endswith(".txt"):
                continue
            split, label, review_id = parts[1], parts[2], int(parts[3].split("_")[0])
            names[split, label].append(review_id)
            if review_id in wanted_ids:
                texts[split, label, review_id] = tar.extractfile(member).read().decode("utf-8")
    sample = {}
    for (split, label, review_id), text in texts.items():
        offset = 0 if label == "neg" else len(names[split, "neg"])
        sample[split, offset + sorted(names[split, label]).index(review_id)] = text
    return sample


def test_real_rows_match_independent_multi_hot(imdb, raw_sample):
    assert len(raw_sample) == 20
    for split in (imdb.train, imdb.validation):
        rows = sorted(row for name, row in raw_sample if name == split.name)
        expected = reference_multi_hot([raw_sample[split.name, r] for r in rows], imdb.vocabulary, imdb.num_words)
        np.testing.assert_array_equal(densify(split.x.take(rows)), expected)
        assert (split.y[rows] == (np.asarray(rows) >= 12_500)).all()


def test_real_cache_hit_reads_no_review_and_is_identical(imdb, imdb_archive, imdb_cache_dir, monkeypatch):
    def no_read(*args):
        raise AssertionError("a cache hit must not read the archive's reviews")

    monkeypatch.setattr(data, "_archive_records", no_read)
    again = load_imdb(imdb_archive, cache_dir=imdb_cache_dir)  # its speed: benchmarks/data_load.py
    assert again.vocabulary == imdb.vocabulary and again.checksum == imdb.checksum
    for a, b in [(again.train, imdb.train), (again.validation, imdb.validation)]:
        chex.assert_trees_all_equal((a.x.indptr, a.x.indices, a.y), (b.x.indptr, b.x.indices, b.y))


def test_real_holdout_protocol(imdb, imdb_archive, imdb_cache_dir):
    held = load_imdb(imdb_archive, cache_dir=imdb_cache_dir, validation="holdout", holdout_size=10_000, seed=3)
    assert held.protocol == "holdout" and (held.train.name, held.validation.name) == ("train", "holdout")
    assert (len(held.train), len(held.validation)) == (15_000, 10_000)
    assert "TEST set is used" not in held.describe()
    train_rows, holdout_rows = data.holdout_indices(25_000, 10_000, seed=3)
    assert np.intersect1d(train_rows, holdout_rows).size == 0
    np.testing.assert_array_equal(np.union1d(train_rows, holdout_rows), np.arange(25_000))
    for split, rows in [(held.train, train_rows), (held.validation, holdout_rows)]:
        chex.assert_trees_all_equal(
            (split.x.indptr, split.x.indices, split.y),
            (imdb.train.x.take(rows).indptr, imdb.train.x.take(rows).indices, imdb.train.y[rows]),
        )
    # the test set stays, as the test split (the book's validation set), evaluated apart, never used to choose
    assert held.test is not None and held.test.name == "test" and imdb.test is None
    chex.assert_trees_all_equal(
        (held.test.x.indptr, held.test.x.indices, held.test.y),
        (imdb.validation.x.indptr, imdb.validation.x.indices, imdb.validation.y),
    )
    assert "test 25,000 reviews (test)" in held.describe() and "never used to choose" in held.describe()
    same = load_imdb(imdb_archive, cache_dir=imdb_cache_dir, validation="holdout", seed=3)
    other = load_imdb(imdb_archive, cache_dir=imdb_cache_dir, validation="holdout", seed=4)
    np.testing.assert_array_equal(same.validation.x.indices, held.validation.x.indices)
    assert not np.array_equal(other.validation.y, held.validation.y)


# --- fake archives and folders: encoding rules ----------------------------------------


def test_fake_archive_vocabulary_and_rows(make_fake_imdb, fake_reviews, tmp_path):
    ds = load_imdb(make_fake_imdb(), num_words=8, cache_dir=tmp_path / "cache")
    counts = collections.Counter(
        token
        for (split, _), texts in fake_reviews.items()
        if split == "train"
        for text in texts
        for token in reference_tokens(text)
    )
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    assert ds.vocabulary == tuple(ranked[:5])
    assert ds.vocabulary[:2] == ("great", "bad") and "br" not in counts and "don't" in counts
    for split, name in [(ds.train, "train"), (ds.validation, "test")]:
        texts = fake_reviews[name, "neg"] + fake_reviews[name, "pos"]
        np.testing.assert_array_equal(densify(split.x), reference_multi_hot(texts, ds.vocabulary, 8))
        np.testing.assert_array_equal(
            split.y, [0.0] * len(fake_reviews[name, "neg"]) + [1.0] * len(fake_reviews[name, "pos"])
        )
        assert_csr_valid(split.x)


def test_reviews_sorted_by_numeric_id_and_folder_equals_archive(make_fake_imdb, tmp_path):
    reviews = {
        key: {10: "ten", 2: "two", 1: "one one", 100: "hundred"}
        for key in [("train", "neg"), ("train", "pos"), ("test", "neg"), ("test", "pos")]
    }
    from_archive = load_imdb(make_fake_imdb(reviews), use_cache=False)
    from_folder = load_imdb(make_fake_imdb(reviews, archive=False), use_cache=False)
    from_parent = load_imdb(tmp_path, source="folder", use_cache=False)
    index = {w: i + FIRST_WORD for i, w in enumerate(from_archive.vocabulary)}
    expected_second_words = [index[w] for w in ("one", "two", "ten", "hundred")] * 2
    x = from_archive.train.x
    assert x.indices[x.indptr[:-1] + 1].tolist() == expected_second_words  # after START
    for other in (from_folder, from_parent):
        assert other.vocabulary == from_archive.vocabulary
        np.testing.assert_array_equal(other.train.x.indices, from_archive.train.x.indices)
        np.testing.assert_array_equal(other.validation.y, from_archive.validation.y)
    assert from_folder.checksum.startswith("folder:") and from_folder.checksum != from_archive.checksum


def test_wide_vocabulary_uses_int32_and_short_vocabulary(make_fake_imdb):
    ds = load_imdb(make_fake_imdb(), num_words=40_000, use_cache=False)
    assert ds.train.x.indices.dtype == np.int32 and ds.train.x.num_words == 40_000
    assert len(ds.vocabulary) < 40_000 - FIRST_WORD
    assert OOV not in ds.train.x.indices  # every train word is in the vocabulary
    assert OOV in ds.validation.x.indices  # "unseenword" only occurs in test


def test_env_var_path(make_fake_imdb, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREG_DATA", str(make_fake_imdb()))
    monkeypatch.setenv("JAXREG_CACHE", str(tmp_path / "env_cache"))
    ds = load_imdb(num_words=20)
    assert len(ds.train) == 6 and list((tmp_path / "env_cache").glob("*.npz"))


# --- cache ----------------------------------------------------------------------------


def count_reads(monkeypatch) -> list:
    calls = []
    original = data._archive_records

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(data, "_archive_records", counting)
    return calls


def test_cache_hit_miss_on_num_words_and_no_temp_files(make_fake_imdb, tmp_path, monkeypatch):
    archive, cache = make_fake_imdb(), tmp_path / "cache"
    calls = count_reads(monkeypatch)
    first = load_imdb(archive, num_words=8, cache_dir=cache)
    second = load_imdb(archive, num_words=8, cache_dir=cache)
    assert len(calls) == 1
    chex.assert_trees_all_equal(
        (first.train.x.indices, first.validation.y), (second.train.x.indices, second.validation.y)
    )
    wider = load_imdb(archive, num_words=9, cache_dir=cache)
    assert len(calls) == 2 and len(wider.vocabulary) == 6
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob("*.tmp"))
    load_imdb(archive, num_words=8, cache_dir=tmp_path / "unused", use_cache=False)
    assert len(calls) == 3 and not (tmp_path / "unused").exists()


def test_changed_archive_never_returns_stale_cache(make_fake_imdb, fake_reviews, tmp_path):
    cache = tmp_path / "cache"
    archive = make_fake_imdb()
    before = load_imdb(archive, cache_dir=cache)
    changed = dict(fake_reviews)
    changed["train", "pos"] = fake_reviews["train", "pos"][:-1] + ["brilliant brilliant brilliant brilliant"]
    make_fake_imdb(changed)  # same file name, new content
    after = load_imdb(archive, cache_dir=cache)
    assert after.checksum != before.checksum
    assert after.vocabulary[0] == "brilliant" and "brilliant" not in before.vocabulary


def test_changed_folder_never_returns_stale_cache(make_fake_imdb, tmp_path):
    cache = tmp_path / "cache"
    root = make_fake_imdb(archive=False)
    before = load_imdb(root, cache_dir=cache)
    (root / "test" / "pos" / "0_8.txt").write_text("great fun, loved it")
    after = load_imdb(root, cache_dir=cache)
    assert after.checksum != before.checksum
    assert len(after.validation.x.indices) == len(before.validation.x.indices) + 2  # "loved", "it" are new


@pytest.mark.parametrize("damage", [b"not a zip file", b""])
def test_corrupt_cache_is_ignored_and_rewritten(make_fake_imdb, tmp_path, damage):
    archive, cache = make_fake_imdb(), tmp_path / "cache"
    good = load_imdb(archive, cache_dir=cache)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(damage or cache_file.read_bytes()[:200])
    with pytest.warns(UserWarning, match="rebuilt"):
        again = load_imdb(archive, cache_dir=cache)
    np.testing.assert_array_equal(again.train.x.indices, good.train.x.indices)
    third = load_imdb(archive, cache_dir=cache)  # the rewritten file is valid: no warning
    np.testing.assert_array_equal(third.validation.y, good.validation.y)


def test_cache_with_mismatched_metadata_is_ignored(make_fake_imdb, tmp_path):
    archive, cache = make_fake_imdb(), tmp_path / "cache"
    load_imdb(archive, cache_dir=cache, num_words=8)
    (cache_file,) = cache.glob("*.npz")
    arrays = dict(np.load(cache_file))
    arrays["meta"] = np.array("checksum=other")
    arrays["train_y"] = 1 - arrays["train_y"]  # what the stale cache would give, were it used
    np.savez(cache_file, **arrays)
    with pytest.warns(UserWarning, match="does not match"):
        again = load_imdb(archive, cache_dir=cache, num_words=8)
    fresh = load_imdb(archive, num_words=8, use_cache=False)
    chex.assert_trees_all_equal((again.train.x.indices, again.train.y), (fresh.train.x.indices, fresh.train.y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten with the right metadata: the next load uses it silently
        third = load_imdb(archive, cache_dir=cache, num_words=8)
    np.testing.assert_array_equal(third.train.y, fresh.train.y)


# --- bad inputs -----------------------------------------------------------------------


def test_missing_path(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    with pytest.raises(DataError, match="JAXREG_DATA") as info:
        load_imdb()
    assert "tfds" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_imdb(tmp_path / "nope.tar.gz")


def test_folder_that_is_not_aclimdb(tmp_path):
    (tmp_path / "train" / "pos").mkdir(parents=True)
    (tmp_path / "train" / "neg").mkdir(parents=True)
    (tmp_path / "test" / "neg").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing subfolder\(s\) test/pos"):
        load_imdb(tmp_path, use_cache=False)


def test_source_kind_mismatch(make_fake_imdb, tmp_path):
    with pytest.raises(DataError, match="source='folder'"):
        load_imdb(tmp_path, source="archive")
    with pytest.raises(DataError, match="source='archive'"):
        load_imdb(make_fake_imdb(), source="folder")


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "not_gzip", "empty"])
def test_damaged_archive(make_fake_imdb, tmp_path, kind):
    good = make_fake_imdb().read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "corrupt": good[:100] + bytes(b ^ 0xFF for b in good[100:140]) + good[140:],
        "not_gzip": b"this is not an archive" * 10,
        "empty": b"",
    }[kind]
    path = tmp_path / "damaged.tar.gz"
    path.write_bytes(damaged)
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_imdb(path, cache_dir=tmp_path / "cache")
    assert "download it again" in str(info.value) and info.value.__cause__ is not None


def test_empty_split(make_fake_imdb, fake_reviews):
    reviews = {k: v for k, v in fake_reviews.items() if k != ("train", "pos")}
    with pytest.raises(DataError, match="no reviews found in train/pos"):
        load_imdb(make_fake_imdb(reviews), use_cache=False)
    root = make_fake_imdb(reviews, archive=False)
    (root / "train" / "pos").mkdir()
    (root / "train" / "pos" / "README").write_text("not a review")
    with pytest.raises(DataError, match="no reviews found in train/pos"):
        load_imdb(root, use_cache=False)


@pytest.mark.parametrize("num_words", [3, 0, -1, 2.5])
def test_num_words_too_small(make_fake_imdb, num_words):
    with pytest.raises(DataError, match="num_words >= 4"):
        load_imdb(make_fake_imdb(), num_words=num_words)
    with pytest.raises(DataError, match="num_words >= 4"):
        synthetic_dataset(num_words=num_words)


def test_unknown_source_and_protocol(make_fake_imdb):
    with pytest.raises(DataError, match="'auto', 'archive', 'folder', 'tfds'"):
        load_imdb(make_fake_imdb(), source="zip")
    with pytest.raises(DataError, match="'test'.*'holdout'"):
        load_imdb(make_fake_imdb(), validation="kfold")
    with pytest.raises(DataError, match="holdout_size"):
        load_imdb(make_fake_imdb(), validation="holdout", holdout_size=6, use_cache=False)


def test_tfds_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=re.escape('pip install "jaxreg[tfds]"')) as info:
        load_imdb(source="tfds")
    assert "internet" in str(info.value) and isinstance(info.value.__cause__, ImportError)


# --- SparseMultiHot and synthetic data ------------------------------------------------


def test_take_densify_and_device_batches_agree(synthetic):
    x, y = synthetic.train.x, synthetic.train.y
    dense = densify(x)
    rows = np.array([5, 0, 5, 299, 17])
    np.testing.assert_array_equal(densify(x.take(rows)), dense[rows])
    order = batches.epoch_order(0, 0, len(x))
    epoch = batches.make_batches(x, y, order, 128, batches.capacity(x.lengths, [order], 128))
    stacked = np.asarray(epoch.x.dense()).reshape(-1, x.num_words)[: len(x)]
    np.testing.assert_array_equal(stacked, dense[order])
    empty = x.take([])
    assert len(empty) == 0 and densify(empty).shape == (0, x.num_words)


def test_synthetic_structure_determinism_and_signal(synthetic):
    assert synthetic.protocol == "synthetic" and len(synthetic.train) == 300 and len(synthetic.validation) == 200
    assert synthetic.vocabulary[:2] == ("w3", "w4") and len(synthetic.vocabulary) == 297
    for split in (synthetic.train, synthetic.validation):
        assert_csr_valid(split.x)
        assert split.y.dtype == np.float32 and 0.35 < split.y.mean() < 0.65
    same = synthetic_dataset(n_train=300, n_validation=200, num_words=300, n_signal_words=20, seed=0)
    other = synthetic_dataset(n_train=300, n_validation=200, num_words=300, n_signal_words=20, seed=1)
    assert same.checksum == synthetic.checksum != other.checksum
    np.testing.assert_array_equal(same.train.x.indices, synthetic.train.x.indices)
    assert not np.array_equal(other.train.y, synthetic.train.y)
    # The planted signal is learnable: ridge regression on train predicts validation well.
    xt, xv = densify(synthetic.train.x, np.float64), densify(synthetic.validation.x, np.float64)
    w = np.linalg.solve(xt.T @ xt + 10.0 * np.eye(xt.shape[1]), xt.T @ (2.0 * synthetic.train.y - 1.0))
    accuracy = ((xv @ w > 0) == (synthetic.validation.y > 0.5)).mean()
    assert accuracy > 0.7


def test_synthetic_bad_arguments():
    with pytest.raises(DataError, match="n_signal_words"):
        synthetic_dataset(num_words=10, n_signal_words=50)
    with pytest.raises(DataError, match="label_noise"):
        synthetic_dataset(label_noise=0.9)
