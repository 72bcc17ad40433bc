"""Tests of jaxreg.dataset: from_arrays (dense, scipy.sparse, index lists), target detection,
checksums, holdout, Dataset's own checks, and that IMDB and synthetic data come out of the same
construction. Property tests (hypothesis): for arbitrary inputs from_arrays either returns a
Dataset that keeps the data, or refuses with a DataError naming the argument; never another exception.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_data import reference_tokens

from jaxreg import data
from jaxreg.dataset import TARGETS, DataError, Dataset, SparseMultiHot, Split, densify, from_arrays, holdout_indices

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dense_of_lists(rows, num_words) -> np.ndarray:
    """Multi-hot matrix of index lists, written out without jaxreg."""
    out = np.zeros((len(rows), num_words), np.float32)
    for i, row in enumerate(rows):
        for j in row:
            out[i, j] = 1
    return out


def assert_same_split(a: Split, b: Split):
    assert type(a.x) is type(b.x)
    if isinstance(a.x, SparseMultiHot):
        assert a.x.num_words == b.x.num_words
        for u, v in [(a.x.indptr, b.x.indptr), (a.x.indices, b.x.indices)]:
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)
    else:
        assert a.x.dtype == b.x.dtype
        np.testing.assert_array_equal(a.x, b.x)
    assert a.y.dtype == b.y.dtype
    np.testing.assert_array_equal(a.y, b.y)


# --- target detection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "y, y_val, target, num_classes, dtype",
    [
        ([0.5, 1.0, -2.25, 3.0], [0.0, 7.5], "regression", None, np.float32),
        ([0, 1, 1, 0], [1, 0], "binary", None, np.float32),
        ([0.0, 1.0, 1.0, 0.0], [1.0, 1.0], "binary", None, np.float32),
        ([True, False, True, True], [False, True], "binary", None, np.float32),
        ([0, 0, 0, 0], [0, 0], "binary", None, np.float32),
        ([0, 1, 2, 1], [2, 0], "multiclass", 3, np.int32),
        ([0, 1, 2, 1], [4, 0], "multiclass", 5, np.int32),  # the largest label of validation counts too
        ([3.0, 1.0, 2.0, 0.0], [1.0, 2.0], "regression", None, np.float32),  # float class ids need target="multiclass"
        (np.array([0, 2, 1, 2], np.uint8), np.array([1, 1], np.uint8), "multiclass", 3, np.int32),
    ],
)
def test_auto_target(y, y_val, target, num_classes, dtype):
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    d = from_arrays(x, y, validation=(x[:2], y_val))
    assert (d.target, d.num_classes) == (target, num_classes)
    for split, want in [(d.train, y), (d.validation, y_val)]:
        assert split.y.dtype == dtype
        np.testing.assert_array_equal(split.y, np.asarray(want, np.float64))
    assert d.num_features == d.num_words == 2


def test_explicit_target_and_num_classes():
    x = np.ones((4, 3))
    d = from_arrays(x, [0, 1, 1, 0], validation=(x[:2], [1, 1]), num_classes=4)
    assert (d.target, d.num_classes, d.train.y.dtype) == ("multiclass", 4, np.int32)
    d = from_arrays(x, [0, 1, 2, 3], validation=(x[:2], [-1, 5]), target="regression")
    assert d.target == "regression" and d.validation.y.tolist() == [-1.0, 5.0]
    with pytest.raises(
        DataError, match=re.escape("validation[1] holds the label 4 at row 1, out of range for num_classes=3")
    ):
        from_arrays(x, [0, 1, 2, 0], validation=(x[:2], [0, 4]), num_classes=3)
    with pytest.raises(DataError, match=re.escape("y must be 0 or 1 for target 'binary'; found 2 at row 2")):
        from_arrays(x, [0, 1, 2, 0], target="binary")
    with pytest.raises(DataError, match="num_classes=3 is only for target 'multiclass'"):
        from_arrays(x, [0.5, 1, 2, 0], target="regression", num_classes=3)
    with pytest.raises(DataError, match=re.escape("y holds the non-integer label 0.5 at row 0")):
        from_arrays(x, [0.5, 1, 2, 0], target="multiclass")
    with pytest.raises(DataError, match=re.escape("y holds the negative label -1 at row 3") + ".*target='regression'"):
        from_arrays(x, [0, 1, 2, -1])


# --- the kinds of x -----------------------------------------------------------------------


def test_index_lists_are_deduplicated_sorted_and_num_words_inferred():
    rows = [[5, 1, 1, 3], [], [0], [2, 2, 2], [4, 0]]
    val = [[7], [1, 6, 1]]
    d = from_arrays(rows, [0, 1, 0, 1, 1], validation=(val, [1, 0]))
    assert d.num_words == 8  # the largest index, 7, is in validation
    assert d.train.x.indices.dtype == np.int16
    np.testing.assert_array_equal(densify(d.train.x), dense_of_lists(rows, 8))
    np.testing.assert_array_equal(densify(d.validation.x), dense_of_lists(val, 8))
    np.testing.assert_array_equal(d.train.x.indptr, [0, 3, 3, 4, 5, 7])
    np.testing.assert_array_equal(d.train.x.indices, [1, 3, 5, 0, 2, 0, 4])
    wide = from_arrays(rows, [0, 1, 0, 1, 1], validation=(val, [1, 0]), num_words=40_000)
    assert wide.num_words == 40_000 and wide.train.x.indices.dtype == np.int32
    np.testing.assert_array_equal(densify(wide.train.x)[:, :8], dense_of_lists(rows, 8))
    with pytest.raises(DataError, match=re.escape("validation[0] holds the column index 7, but num_words=6")):
        from_arrays(rows, [0, 1, 0, 1, 1], validation=(val, [1, 0]), num_words=6)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "csr_array"])
def test_scipy_sparse_of_ones_equals_the_index_lists(fmt):
    rows = [[0, 3], [2], [], [1, 2, 3], [3]]
    dense = dense_of_lists(rows, 5)
    matrix = sp.csr_array(dense) if fmt == "csr_array" else sp.csr_matrix(dense).asformat(fmt)
    y = [0, 1, 1, 0, 1]
    a = from_arrays(matrix, y, validation=(matrix, y))
    b = from_arrays(rows, y, validation=(rows, y), num_words=5)
    assert_same_split(a.train, b.train)
    assert_same_split(a.validation, b.validation)
    assert a.checksum == b.checksum and a.num_words == 5


def test_scipy_sparse_weights_are_refused_and_stored_zeros_ignored():
    weighted = sp.csr_matrix(np.array([[0.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(
        DataError,
        match=re.escape("x is a scipy.sparse matrix with stored values other than 1 (e.g. 2.0)") + ".*x.toarray()",
    ):
        from_arrays(weighted, [0, 1], validation=(weighted, [0, 1]))
    doubled = sp.coo_matrix(([1.0, 1.0], ([0, 0], [1, 1])), shape=(2, 2))  # scipy adds duplicates: a 2
    with pytest.raises(DataError, match="other than 1"):
        from_arrays(doubled, [0, 1], validation=(doubled, [0, 1]))
    zeros = sp.csr_matrix((np.array([1.0, 0.0]), np.array([1, 0]), np.array([0, 2, 2])), shape=(2, 2))
    d = from_arrays(zeros, [0, 1], validation=(zeros, [0, 1]))
    np.testing.assert_array_equal(densify(d.train.x), [[0, 1], [0, 0]])


def test_dense_x_is_float32_and_must_be_finite():
    x = np.arange(12).reshape(6, 2)
    d = from_arrays(x, np.arange(6) * 0.5, holdout=2, seed=4)
    assert d.train.x.dtype == np.float32 and d.target == "regression"
    train_rows, holdout_rows = holdout_indices(6, 2, 4)
    np.testing.assert_array_equal(d.train.x, x[train_rows])
    np.testing.assert_array_equal(d.validation.x, x[holdout_rows])
    np.testing.assert_array_equal(d.validation.y, (np.arange(6) * 0.5)[holdout_rows])
    for bad, shown in [(np.nan, "nan"), (np.inf, "inf"), (1e39, "1e+39")]:
        xb = x.astype(np.float64)
        xb[3, 1] = bad
        with pytest.raises(DataError, match=re.escape(f"x holds {shown} at row 3, column 1")):
            from_arrays(xb, np.zeros(6))
    with pytest.raises(DataError, match=re.escape("x must be 2-D [n, d], got shape (6,)")):
        from_arrays(np.zeros(6), np.zeros(6))
    with pytest.raises(DataError, match="x has dtype complex128"):
        from_arrays(np.zeros((6, 2), complex), np.zeros(6))
    with pytest.raises(DataError, match="dense arrays"):
        from_arrays(x, np.zeros(6), validation=([[0, 1]], [0]))
    with pytest.raises(DataError, match=re.escape("x[0] must be a flat list of integer column indices")):
        from_arrays([[0.5, 1.5]], [0])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(y=np.zeros(5)), "y has 5 targets but its x has 6 rows"),
        (dict(y=np.zeros((6, 1))), "y must be 1-D [n], got shape (6, 1)"),
        (dict(y=[0, 1, np.nan, 0, 1, 0]), "y holds nan at row 2"),
        (dict(y=["a"] * 6), "y has dtype <U1"),
        (dict(y=None), "y is None"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "x is empty"),
        (dict(x=[], y=[]), "x is empty"),
        (dict(validation=(sp.csr_matrix((0, 2)), [])), "validation[0] is empty"),
        (dict(y=[]), "y has 0 targets but its x has 6 rows"),
        (dict(validation=(np.zeros((2, 3)), [0, 1])), "x and validation[0] have different numbers of columns"),
        (dict(validation=(np.zeros((2, 2)),)), "validation must be an (x_val, y_val) pair"),
        (dict(validation=(np.zeros((2, 2)), [0, 1, 1])), "validation[1] has 3 targets but its x has 2 rows"),
        (dict(holdout=0.01), "holdout=0.01 holds out 0 of the 6 rows"),
        (dict(holdout=6), "holdout=6 holds out 6 of the 6 rows"),
        (dict(holdout=True), "holdout=True must be a fraction"),
        (dict(seed=-1), "seed=-1 must be an integer >= 0"),
        (dict(target="ordinal"), "target='ordinal' must be 'auto' or one of"),
        (dict(num_classes=1), "num_classes=1 must be None or an integer >= 2"),
        (dict(num_words=3), "num_words=3 but x has 2 columns"),
        (dict(name=""), "name='' must be a non-empty string"),
        (dict(x="abc"), "x is 'abc'; pass a 2-D numpy array"),
        (dict(x=[[0], [-1], [1], [0], [0], [0]]), "x[1] holds the negative column index -1"),
        (dict(x=[[0], 3, [1], [0], [0], [0]]), "x[1] is 3; each row of index lists must be a list"),
    ],
)
def test_bad_input_names_the_argument(kwargs, fragment):
    args = dict(x=np.zeros((6, 2)), y=np.array([0, 1, 0, 1, 0, 1]))
    args.update(kwargs)
    with pytest.raises(DataError, match=re.escape(fragment)):
        from_arrays(args.pop("x"), args.pop("y"), **args)


def test_checksum_is_of_the_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    a, b = from_arrays(x, y, seed=1), from_arrays(x.copy(), y.copy(), seed=1, name="other name")
    assert a.checksum == b.checksum and a.checksum.startswith("arrays:")
    assert from_arrays(x, y, seed=2).checksum != a.checksum  # another holdout
    y2 = y.copy()
    y2[0] = 1 - y2[0]
    assert from_arrays(x, y2, seed=1).checksum != a.checksum
    assert from_arrays(x, y, seed=1, target="regression").checksum != a.checksum
    assert from_arrays(x, y, seed=1, num_classes=2).checksum != a.checksum


def test_holdout_fraction_rounds_to_rows_and_describes():
    x, y = np.ones((10, 2)), np.arange(10) % 2
    d = from_arrays(x, y, holdout=0.3, seed=3, name="mine")
    assert (len(d.train), len(d.validation), d.protocol) == (7, 3, "arrays-holdout")
    train_rows, holdout_rows = holdout_indices(10, 3, 3)
    np.testing.assert_array_equal(d.validation.y, y[holdout_rows])
    text = d.describe()
    assert "Data: mine, holdout=0.3 (3 rows), seed=3" in text and "train 7 examples" in text and "holdout" in text
    given_ = from_arrays(x, y, validation=(x[:2], y[:2]))
    assert given_.protocol == "given" and "as given" in given_.describe()


# --- Dataset's own checks -----------------------------------------------------------------


def _dataset(**changes):
    x = np.zeros((3, 2), np.float32)
    fields = dict(
        train=Split(x, np.array([0, 1, 0], np.float32), "train"),
        validation=Split(x, np.array([1, 1, 0], np.float32), "validation"),
        protocol="given",
        num_words=2,
        source="test",
        checksum="c",
    )
    fields.update(changes)
    return Dataset(**fields)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(target="ordinal"), "target='ordinal' must be one of"),
        (dict(target="multiclass", num_classes=3), "train.y is float32; target 'multiclass' needs int32"),
        (dict(target="multiclass"), "num_classes=None must be an integer >= 2"),
        (dict(num_classes=2), "num_classes=2 must be None for target 'binary'"),
        (dict(num_words=3), "train.x has 2 columns, the dataset num_words=3"),
        (
            dict(train=Split(np.zeros((3, 2), np.float32), np.array([0, 2, 0], np.float32), "train")),
            "train.y must be 0 or 1",
        ),
        (
            dict(validation=Split(np.full((3, 2), np.nan, np.float32), np.zeros(3, np.float32), "v")),
            "validation.x holds NaN",
        ),
        (dict(validation=Split(np.zeros((3, 2)), np.zeros(3, np.float32), "v")), "validation.x must be float32"),
        (dict(validation=Split(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), "v")), "validation is empty"),
        (
            dict(
                validation=Split(
                    SparseMultiHot(np.array([0, 1]), np.array([1], np.int16), 2), np.zeros(1, np.float32), "v"
                )
            ),
            "must both be SparseMultiHot or both dense",
        ),
    ],
)
def test_dataset_checks_its_fields(changes, fragment):
    _dataset()  # the unchanged fields are valid
    with pytest.raises(DataError, match=re.escape(fragment)):
        _dataset(**changes)


def test_multiclass_labels_in_range():
    x = np.zeros((3, 2), np.float32)
    split = Split(x, np.array([0, 3, 1], np.int32), "train")
    with pytest.raises(DataError, match=re.escape("train.y must be in 0..2 (num_classes=3); found 3 at row 1")):
        _dataset(train=split, validation=split, target="multiclass", num_classes=3)
    assert _dataset(train=split, validation=split, target="multiclass", num_classes=4).num_classes == 4


def test_split_checks_its_shapes():
    with pytest.raises(DataError, match="y has shape"):
        Split(np.zeros((3, 2), np.float32), np.zeros(2, np.float32), "s")
    with pytest.raises(DataError, match="x is a list"):
        Split([[1]], np.zeros(1, np.float32), "s")


# --- IMDB and synthetic data come out of the same construction ----------------------------


def test_imdb_rows_equal_from_arrays_of_the_reviews_index_lists(make_fake_imdb, fake_reviews):
    """load_imdb's arrays equal from_arrays' of [START] + word indices per review, built here without jaxreg."""
    d = data.load_imdb(make_fake_imdb(), num_words=12, use_cache=False)
    index = {w: i + data.FIRST_WORD for i, w in enumerate(d.vocabulary)}
    lists, labels = {}, {}
    for split in ("train", "test"):
        reviews = [(lab, t) for lab in ("neg", "pos") for t in fake_reviews[split, lab]]
        lists[split] = [[data.START] + [index.get(w, data.OOV) for w in reference_tokens(t)] for _, t in reviews]
        labels[split] = [int(lab == "pos") for lab, _ in reviews]
    rebuilt = from_arrays(lists["train"], labels["train"], validation=(lists["test"], labels["test"]), num_words=12)
    assert rebuilt.target == d.target == "binary"
    assert_same_split(rebuilt.train, d.train)
    assert_same_split(rebuilt.validation, d.validation)
    dense = from_arrays(densify(d.train.x), labels["train"], validation=(densify(d.validation.x), labels["test"]))
    np.testing.assert_array_equal(dense.train.x, densify(d.train.x))


def test_synthetic_rows_equal_from_arrays_of_their_scipy_matrix(synthetic):
    """The synthetic CSR arrays, dtypes included, equal what from_arrays makes of the same matrix."""
    d = synthetic
    rebuilt = from_arrays(
        sp.csr_matrix(densify(d.train.x)),
        d.train.y,
        validation=(sp.coo_matrix(densify(d.validation.x)), d.validation.y),
    )
    assert (rebuilt.target, rebuilt.num_words) == ("binary", d.num_words)
    assert_same_split(rebuilt.train, d.train)
    assert_same_split(rebuilt.validation, d.validation)


# --- properties ---------------------------------------------------------------------------

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -1e39, 3.4e38, 0.0, -0.0, 0.5, 1.0, 2.0]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
)


@FEW
@given(
    y=st.lists(values, min_size=1, max_size=12),
    target=st.sampled_from(("auto",) + TARGETS),
    num_classes=st.one_of(st.none(), st.integers(-2, 6)),
)
def test_targets_are_kept_or_refused_by_name(y, target, num_classes):
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2)
    try:
        d = from_arrays(x, y, validation=(x, y), target=target, num_classes=num_classes)
    except DataError as e:
        assert str(e).startswith(("y ", "validation[1] ", "num_classes=")), str(e)
        return
    assert target in ("auto", d.target) and d.target in TARGETS
    want = np.asarray(y, np.float64)
    assert np.isfinite(want).all() and np.allclose(d.train.y.astype(np.float64), want, rtol=1e-6)
    if d.target == "multiclass":
        assert d.train.y.dtype == np.int32 and d.num_classes > d.train.y.max() and (want >= 0).all()
        assert num_classes in (None, d.num_classes)
    else:
        assert d.train.y.dtype == np.float32 and d.num_classes is None
    if d.target == "binary":
        assert set(want.tolist()) <= {0.0, 1.0}


@FEW
@given(
    rows=st.lists(st.lists(st.integers(-3, 40), max_size=8), min_size=1, max_size=10),
    num_words=st.one_of(st.none(), st.integers(-1, 50)),
)
def test_index_lists_are_kept_or_refused_by_name(rows, num_words):
    y = np.arange(len(rows)) % 2
    try:
        d = from_arrays(rows, y, validation=(rows, y), num_words=num_words)
    except DataError as e:
        assert re.search(r"\bx\[\d+\]|num_words=|x has no columns", str(e)), str(e)
        return
    flat = [j for r in rows for j in r]
    assert min(flat, default=0) >= 0
    assert d.num_words == (num_words if num_words is not None else max(flat) + 1)
    np.testing.assert_array_equal(densify(d.train.x), dense_of_lists(rows, d.num_words))
    assert d.train.x.indices.dtype == (np.int16 if d.num_words <= 32767 else np.int32)


@FEW
@given(
    x=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    )
)
def test_dense_x_is_kept_or_refused_by_name(x):
    n = x.shape[0]
    try:
        d = from_arrays(x, np.arange(n) % 2, validation=(x, np.arange(n) % 2))
    except DataError as e:
        assert re.search(r"^(x|y) ", str(e)), str(e)
        return
    assert x.ndim == 2 and x.shape[1] >= 1
    np.testing.assert_array_equal(d.train.x, x.astype(np.float32))
    assert np.isfinite(d.train.x).all()


@FEW
@given(
    holdout=st.one_of(values, st.fractions(), st.text(max_size=3), st.none()),
    seed=st.one_of(st.integers(-5, 2**70), st.floats(), st.booleans()),
)
def test_holdout_and_seed_are_kept_or_refused_by_name(holdout, seed):
    x, y = np.ones((10, 2)), np.arange(10) % 2
    try:
        d = from_arrays(x, y, holdout=holdout, seed=seed)
    except DataError as e:
        assert f"holdout={holdout!r}" in str(e) or f"seed={seed!r}" in str(e), str(e)
        return
    assert len(d.train) + len(d.validation) == 10 and len(d.validation) >= 1 and len(d.train) >= 1
    expected = int(holdout) if isinstance(holdout, int) else round(float(holdout) * 10)
    assert len(d.validation) == expected


@pytest.mark.parametrize(
    "loader, target, num_classes",
    [("load_breast_cancer", "binary", None), ("load_digits", "multiclass", 10), ("load_diabetes", "regression", None)],
)
def test_scikit_learn_toy_data_sets(loader, target, num_classes):
    """scikit-learn's bundled data sets (no download) get the target their labels say."""
    datasets = pytest.importorskip("sklearn.datasets", reason='needs scikit-learn (pip install "jaxreg[examples]")')
    x, y = getattr(datasets, loader)(return_X_y=True)
    d = from_arrays(x, y, seed=0)
    assert (d.target, d.num_classes, d.num_features) == (target, num_classes, x.shape[1])
    assert len(d.train) + len(d.validation) == len(y) and len(d.validation) == round(0.2 * len(y))
    train_rows, _ = holdout_indices(len(y), len(d.validation), 0)
    np.testing.assert_array_equal(d.train.x, x[train_rows].astype(np.float32))
    np.testing.assert_allclose(d.train.y, y[train_rows], rtol=1e-6)
