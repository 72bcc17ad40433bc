"""The data the trainer takes: two splits of inputs and targets, from IMDB or from your own arrays.

Inputs (``Split.x``) are either multi-hot rows (``SparseMultiHot``: each row a set of active
columns, stored in CSR form and sent to the device as (row, column) pairs) or a dense
float32 ``np.ndarray`` [n, d]. Targets (``Split.y``) depend on ``Dataset.target``:

* ``"binary"``: float32 [n], every value 0 or 1;
* ``"multiclass"``: int32 [n], values 0..num_classes-1;
* ``"regression"``: float32 [n], finite.

``from_arrays`` builds a Dataset from NumPy arrays, scipy.sparse matrices or lists of index
lists, checks every input (each error names the argument) and chooses the target and the
validation split; ``jaxreg.data.load_imdb`` and ``synthetic_dataset`` build theirs from the
same pieces (``multi_hot``, ``Split.take``, ``holdout_indices``, ``Dataset``'s checks).
"""

from __future__ import annotations

import hashlib
import numbers
import sys
from dataclasses import dataclass

import numpy as np

from jaxreg.checks import is_int, is_number

TARGETS = ("binary", "multiclass", "regression")
_Y_DTYPES = {"binary": np.float32, "multiclass": np.int32, "regression": np.float32}
_INT32_MAX = int(np.iinfo(np.int32).max)
# Classes are output units: every model holds a [last width, classes] output layer and every step
# [batch, classes] logits, so 2**31-1 classes would need hundreds of GB before the first step.
# The bound is the largest hidden width (jaxreg.specs.MAX_WIDTH): an output layer is one more layer.
MAX_CLASSES = 2**16


class DataError(ValueError):
    """A user-facing data problem; the message names the problem and the fix."""


def index_dtype(num_words: int):
    """The smallest index type for columns 0..num_words-1: int16 up to 32,767 columns, else int32."""
    return np.int16 if num_words <= np.iinfo(np.int16).max else np.int32


@dataclass(frozen=True)
class SparseMultiHot:
    """Rows of a multi-hot matrix in CSR form.

    Row i's active columns are indices[indptr[i]:indptr[i+1]], sorted and unique; indptr is
    int64 [n + 1], indices int16 (num_words <= 32767) else int32 [nnz].
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_words: int

    def __post_init__(self):
        if self.indptr.ndim != 1 or self.indptr.size == 0 or self.indices.ndim != 1:
            raise ValueError("SparseMultiHot needs a 1-D indptr of length n + 1 and 1-D indices")
        if self.indptr[0] != 0 or self.indptr[-1] != self.indices.size:
            raise ValueError(
                f"SparseMultiHot indptr must run from 0 to len(indices)={self.indices.size}, "
                f"got {self.indptr[0]}..{self.indptr[-1]}"
            )

    def __len__(self) -> int:
        return self.indptr.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr).astype(np.int32)

    def take(self, rows) -> SparseMultiHot:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.arange(indptr[-1], dtype=np.int64) + np.repeat(self.indptr[rows] - indptr[:-1], lengths)
        return SparseMultiHot(indptr, self.indices[gather], self.num_words)

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes)


def multi_hot(rows: np.ndarray, cols: np.ndarray, n: int, num_words: int) -> SparseMultiHot:
    """CSR multi-hot rows from (row, column) pairs in any order, duplicates allowed (kept once).

    rows in 0..n-1 and cols in 0..num_words-1 (the caller checks). The one construction
    every multi-hot input goes through: IMDB reviews, synthetic reviews and index lists.
    """
    keys = np.asarray(rows, np.int64) * num_words + np.asarray(cols, np.int64)
    keys.sort()  # np.unique's hash path is several times slower on millions of keys
    first = np.ones(keys.size, dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    keys = keys[first]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // num_words, minlength=n), out=indptr[1:])
    return SparseMultiHot(indptr, (keys % num_words).astype(index_dtype(num_words)), num_words)


def densify(x, dtype=np.float32) -> np.ndarray:
    """[n, num_words] dense matrix of a SparseMultiHot (for references and tests; big for real data).

    A dense x comes back as an array of `dtype`.
    """
    if isinstance(x, np.ndarray):
        return x.astype(dtype)
    out = np.zeros((len(x), x.num_words), dtype=dtype)
    out[np.repeat(np.arange(len(x)), x.lengths), x.indices] = 1
    return out


@dataclass(frozen=True)
class Split:
    """One split: inputs x (SparseMultiHot or dense float32 [n, d]) and targets y [n]."""

    x: SparseMultiHot | np.ndarray
    y: np.ndarray
    name: str

    def __post_init__(self):
        if not isinstance(self.x, (SparseMultiHot, np.ndarray)):
            raise DataError(
                f"split {self.name!r}: x is a {type(self.x).__name__}; use a SparseMultiHot or a numpy array"
            )
        if not isinstance(self.y, np.ndarray) or self.y.shape != (len(self.x),):
            shape = getattr(self.y, "shape", type(self.y).__name__)
            raise DataError(f"split {self.name!r}: y has shape {shape}, x has {len(self.x)} rows")

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows, name: str) -> Split:
        """The split of these rows (in this order), named `name`."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        x = self.x.take(rows) if isinstance(self.x, SparseMultiHot) else self.x[rows]
        return Split(x, self.y[rows], name)


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits (and, optionally, a test split) with what a run needs to know about them.

    test: a split evaluated every epoch and reported apart (history columns test_*), never used
    to choose anything (best epoch, divergence); None when the data has none, or when the test
    set is the validation set (the book's protocol).
    num_words: the number of input columns (words for IMDB, features for dense data; also
    `num_features`). target: one of TARGETS; num_classes: the number of classes for
    "multiclass", else None. checksum identifies the data (a resumed run compares it).
    """

    train: Split
    validation: Split
    protocol: str
    num_words: int
    source: str
    checksum: str
    vocabulary: tuple[str, ...] = ()
    target: str = "binary"
    num_classes: int | None = None
    test: Split | None = None

    def __post_init__(self):
        if not isinstance(self.target, str) or self.target not in TARGETS:
            raise DataError(f"target={self.target!r} must be one of {', '.join(map(repr, TARGETS))}")
        if self.target == "multiclass":
            if not is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES:
                raise DataError(
                    f"num_classes={self.num_classes!r} must be an integer >= 2 (at most {MAX_CLASSES:,}) for target 'multiclass'"
                )
        elif self.num_classes is not None:
            raise DataError(
                f"num_classes={self.num_classes!r} must be None for target {self.target!r} (only multiclass has classes)"
            )
        if not is_int(self.num_words) or self.num_words < 1:
            raise DataError(f"num_words={self.num_words!r} must be an integer >= 1 (the number of input columns)")
        kinds = {type(s.x) for s in (self.train, self.validation)}
        if len(kinds) > 1:
            raise DataError(
                "train.x and validation.x must both be SparseMultiHot or both dense arrays, not one of each"
            )
        if self.test is not None and isinstance(self.test, Split) and type(self.test.x) not in kinds:
            raise DataError(
                f"test.x is a {type(self.test.x).__name__}, train.x a {type(self.train.x).__name__}: use the same kind"
            )
        for field in ("train", "validation") + (() if self.test is None else ("test",)):
            _check_split(getattr(self, field), field, self.num_words, self.target, self.num_classes)

    @property
    def sparse(self) -> bool:
        """Whether the inputs are multi-hot rows (SparseMultiHot), not dense arrays."""
        return isinstance(self.train.x, SparseMultiHot)

    @property
    def num_features(self) -> int:
        """The number of input columns (the same as num_words)."""
        return self.num_words

    def describe(self) -> str:
        rows = "reviews" if self.vocabulary else "examples"
        head = (
            f"Data: {self.source} [{self.checksum[:24]}], num_words={self.num_words:,}: "
            f"train {len(self.train):,} {rows} ({self.train.name}), "
            f"validation {len(self.validation):,} {rows} ({self.validation.name})"
            + (f", test {len(self.test):,} {rows} ({self.test.name})." if self.test is not None else ".")
        )
        if self.target != "binary":
            classes = f" with {self.num_classes} classes" if self.target == "multiclass" else ""
            head += f" Target: {self.target}{classes}."
        if self.protocol == "test-as-validation":
            tail = (
                "Validation protocol: the TEST set is used as the validation set, as the book does "
                "(so it is not an unbiased final test); validation='holdout' holds out part of train instead."
            )
        elif self.protocol == "holdout":
            tail = (
                "Validation protocol: held-out reviews of the train split; the test set is not used "
                "(vocabulary ranked on the full train split)."
                if self.test is None
                else "Validation protocol: held-out reviews of the train split choose the epoch; the test set "
                "is evaluated every epoch and reported apart, never used to choose (vocabulary ranked on the "
                "full train split)."
            )
        elif self.protocol == "given":
            tail = "Validation protocol: the validation arrays as given."
        elif self.protocol == "arrays-holdout":
            tail = "Validation protocol: a seeded random holdout of the given rows."
        else:
            tail = f"Validation protocol: {self.protocol}."
        if self.test is not None and self.protocol != "holdout":
            tail += " The test split is evaluated every epoch and reported apart, never used to choose."
        return f"{head}\n{tail}"


def _check_split(split: Split, field: str, num_words: int, target: str, num_classes: int | None) -> None:
    """A Split's x and y agree with the dataset's num_words, target and num_classes (DataError naming the field)."""
    if not isinstance(split, Split):
        raise DataError(f"{field} must be a Split, not {type(split).__name__}")
    if len(split) == 0:
        raise DataError(f"{field} is empty; every split needs at least one row")
    x = split.x
    if isinstance(x, SparseMultiHot):
        if x.num_words != num_words:
            raise DataError(f"{field}.x has num_words={x.num_words}, the dataset num_words={num_words}")
        if x.indices.dtype != index_dtype(num_words):
            raise DataError(
                f"{field}.x.indices are {x.indices.dtype}, need {np.dtype(index_dtype(num_words))} for num_words={num_words}"
            )
        if x.indices.size and (x.indices.min() < 0 or x.indices.max() >= num_words):
            raise DataError(f"{field}.x has column indices outside 0..{num_words - 1}")
    else:
        if x.dtype != np.float32 or x.ndim != 2:
            raise DataError(f"{field}.x must be float32 [n, d], got {x.dtype} with shape {x.shape}")
        if x.shape[1] != num_words:
            raise DataError(f"{field}.x has {x.shape[1]} columns, the dataset num_words={num_words}")
        if not np.isfinite(x).all():
            raise DataError(f"{field}.x holds NaN or infinite values")
    y, want = split.y, _Y_DTYPES[target]
    if y.dtype != want:
        raise DataError(f"{field}.y is {y.dtype}; target {target!r} needs {np.dtype(want)}")
    if target == "binary" and not ((y == 0) | (y == 1)).all():
        raise DataError(f"{field}.y must be 0 or 1 for target 'binary'; found {_first_bad(y, (y != 0) & (y != 1))}")
    if target == "regression" and not np.isfinite(y).all():
        raise DataError(f"{field}.y holds NaN or infinite values")
    if target == "multiclass" and ((y < 0) | (y >= num_classes)).any():
        raise DataError(
            f"{field}.y must be in 0..{num_classes - 1} (num_classes={num_classes}); "
            f"found {_first_bad(y, (y < 0) | (y >= num_classes))}"
        )


def _first_bad(values: np.ndarray, bad: np.ndarray) -> str:
    i = int(np.argmax(bad))
    return f"{values[i].item()!r} at row {i}"


def holdout_indices(n: int, holdout_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, holdout_rows), both sorted: a seeded random holdout_size of range(n) is held out."""
    if not 0 < holdout_size < n:
        raise DataError(
            f"holdout_size={holdout_size} must be between 1 and {n - 1} (the train split has {n} reviews); "
            "pass a smaller holdout_size"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout_size:]), np.sort(perm[:holdout_size])


# --- from_arrays ------------------------------------------------------------------------


def from_arrays(
    x,
    y,
    *,
    validation=None,
    test=None,
    holdout=0.2,
    seed: int = 0,
    target: str = "auto",
    num_classes: int | None = None,
    num_words: int | None = None,
    name: str = "arrays",
) -> Dataset:
    """A Dataset from your own arrays, every input checked (DataError naming the argument).

    x: a dense 2-D numpy array (or anything np.asarray makes one of, such as a jax array;
    cast to float32, must stay finite), a scipy.sparse matrix of any format whose stored
    values are all 1 (multi-hot rows; for weighted features pass x.toarray()), a
    SparseMultiHot, or a list of index lists (multi-hot rows: row i's active columns;
    duplicates are kept once). A list is always read as index lists, never as dense rows.
    y: the targets [n]. validation: an (x_val, y_val) pair of the same kinds, or None for a
    seeded random holdout of the rows of x: `holdout` is a fraction in (0, 1) (rounded to
    rows) or a row count, `seed` chooses the rows (`holdout` and `seed` are not used when
    validation is given).
    target: "binary", "multiclass", "regression", or "auto", which looks at y of train and
    validation (and test) together: values all 0 or 1 (any dtype, bool included) are binary; other
    float values are regression (integer-valued floats too, such as scikit-learn's diabetes
    targets: pass target="multiclass" for float class ids); other integer (dtype) values
    >= 0 are multiclass with num_classes = max + 1 unless num_classes is given (a given
    num_classes with "auto" means multiclass). Negative integer labels are refused (pass
    target="regression" for integer targets).
    test: an (x_test, y_test) pair of the same kinds, or None: evaluated every epoch and
    reported apart (history columns test_*), never used to choose an epoch or anything else.
    num_words: the number of columns for index lists (None: the largest index + 1 over
    train, validation and test); for dense and scipy.sparse x it must equal their width if given.
    name: the data's name in describe() and run records. The checksum is a sha256 over the
    final arrays (dtype, shape, bytes), the target and num_classes: equal data, equal checksum.
    """
    _check_options(name, num_words, seed, num_classes, target)
    pairs = _split_pairs(x, y, validation, test)
    xs, width = _converted_inputs(pairs, num_words)
    ys = [_labels(yv, yname, len(xv)) for (_, _, yname, yv), xv in zip(pairs, xs)]
    target, num_classes = _resolve_target(ys, [p[2] for p in pairs], target, num_classes)
    ys = [yv.astype(_Y_DTYPES[target]) for yv in ys]

    train = Split(xs[0], ys[0], "train")
    test_split = Split(xs[-1], ys[-1], "test") if test is not None else None
    if validation is not None:
        val, protocol, source = Split(xs[1], ys[1], "validation"), "given", name
    else:
        count = _holdout_count(holdout, len(train))
        train_rows, holdout_rows = holdout_indices(len(train), count, seed)
        train, val = train.take(train_rows, "train"), train.take(holdout_rows, "holdout")
        protocol, source = "arrays-holdout", f"{name}, holdout={holdout!r} ({count} rows), seed={seed}"
    return Dataset(
        train=train,
        validation=val,
        protocol=protocol,
        num_words=width,
        source=source,
        checksum="arrays:" + arrays_checksum(train, val, target, num_classes, width, test=test_split),
        target=target,
        num_classes=num_classes,
        test=test_split,
    )


def _check_options(name, num_words, seed, num_classes, target) -> None:
    """DataError naming the first of from_arrays' scalar options that is out of range."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"name={name!r} must be a non-empty string")
    if num_words is not None and (not is_int(num_words) or not 1 <= num_words <= _INT32_MAX):
        raise DataError(f"num_words={num_words!r} must be None or an integer in 1..{_INT32_MAX:,}")
    if not is_int(seed) or seed < 0:
        raise DataError(f"seed={seed!r} must be an integer >= 0")
    if num_classes is not None and (not is_int(num_classes) or num_classes < 2):
        raise DataError(f"num_classes={num_classes!r} must be None or an integer >= 2")
    if num_classes is not None and num_classes > MAX_CLASSES:
        raise DataError(_too_many_classes("num_classes", num_classes))
    if not isinstance(target, str) or target not in TARGETS + ("auto",):
        raise DataError(f"target={target!r} must be 'auto' or one of {', '.join(map(repr, TARGETS))}")


def _split_pairs(x, y, validation, test) -> list[tuple]:
    """[(x's argument name, x, y's argument name, y)] for train, then the given validation and test pairs."""
    pairs = [("x", x, "y", y)]
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise DataError(f"validation must be an (x_val, y_val) pair or None, not {_short(validation)}")
        pairs.append(("validation[0]", validation[0], "validation[1]", validation[1]))
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise DataError(f"test must be an (x_test, y_test) pair or None, not {_short(test)}")
        pairs.append(("test[0]", test[0], "test[1]", test[1]))
    return pairs


def _converted_inputs(pairs: list[tuple], num_words: int | None) -> tuple[list, int]:
    """(every split's x, their width): each checked non-empty, all converted at one width, all
    SparseMultiHot or all float32 arrays."""
    inputs = [_inputs(xv, xname) for xname, xv, _, _ in pairs]
    for (kind, value), (xname, *_) in zip(inputs, pairs):
        n = value[2] if kind == "lists" else (len(value) if kind == "sparse" else value.shape[0])
        if n == 0:
            raise DataError(f"{xname} is empty; every split needs at least one row")
    width = _width(inputs, [p[0] for p in pairs], num_words)
    xs = [_finish_inputs(kind, value, width, p[0]) for (kind, value), p in zip(inputs, pairs)]
    if len({type(v) for v in xs}) > 1:
        others = " and ".join(p[0] for p in pairs[1:])
        raise DataError(f"x and {others} must all be multi-hot (index lists, scipy.sparse) or all dense arrays")
    return xs, width


def arrays_checksum(
    train: Split, validation: Split, target: str, num_classes, num_words: int, test: Split | None = None
) -> str:
    """sha256 over the splits' arrays (dtype, shape, bytes), the target, num_classes and num_words
    (and the test split's arrays when there is one; without one, the checksum is as before)."""
    h = hashlib.sha256(f"{target}|{num_classes}|{num_words}".encode())
    for split in (train, validation) + (() if test is None else (test,)):
        x = split.x
        arrays = (x.indptr, x.indices) if isinstance(x, SparseMultiHot) else (x,)
        h.update(f"|{type(x).__name__}".encode())
        for a in (*arrays, split.y):
            a = np.ascontiguousarray(a)
            h.update(f"|{a.dtype.str}{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _scipy_sparse(x) -> bool:
    """Whether x is a scipy.sparse matrix or array; scipy is never imported here (if x is one, it is loaded)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(x)


def _inputs(x, arg: str):
    """(kind, value) with kind "dense" (a numeric 2-D array), "csr" (a scipy CSR of ones), "sparse" or "lists"."""
    if isinstance(x, SparseMultiHot):
        return "sparse", x
    if _scipy_sparse(x):
        if len(x.shape) != 2:
            raise DataError(f"{arg} is a scipy.sparse object of shape {x.shape}; need a 2-D matrix [n, d]")
        csr = x.tocsr(copy=True)
        csr.sum_duplicates()  # duplicates add up (scipy's meaning), so a doubled entry is a 2
        csr.eliminate_zeros()  # stored zeros are absent columns
        if csr.nnz and not (csr.data == 1).all():
            i = int(np.argmax(csr.data != 1))
            raise DataError(
                f"{arg} is a scipy.sparse matrix with stored values other than 1 (e.g. {csr.data[i].item()!r}): multi-hot "
                f"rows need every stored value to be 1; for weighted or dense features pass {arg}.toarray()"
            )
        return "csr", csr
    if isinstance(x, (list, tuple)):
        return "lists", _index_lists(x, arg)
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        try:
            dense = np.asarray(x)
        except Exception as e:  # noqa: BLE001 - whatever __array__ raises, say which argument
            raise DataError(f"{arg} could not be read as an array ({type(e).__name__}: {e})") from e
        if dense.ndim != 2:
            raise DataError(
                f"{arg} must be 2-D [n, d], got shape {dense.shape}; for one feature use {arg}.reshape(-1, 1)"
            )
        if dense.dtype.kind not in "biuf":
            raise DataError(f"{arg} has dtype {dense.dtype}; need numbers (bool, int or float)")
        return "dense", dense
    raise DataError(
        f"{arg} is {_short(x)}; pass a 2-D numpy array, a scipy.sparse matrix of ones, or a list of index lists"
    )


def _index_lists(rows, arg: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(row ids, column ids, n) of a list of index lists, each index an integer >= 0."""
    cols, lengths = [], np.zeros(len(rows), np.int64)
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise DataError(f"{arg}[{i}] is {_short(row)}; each row of index lists must be a list of column indices")
        try:
            a = np.asarray(row)
        except (ValueError, TypeError):  # ragged nesting such as [[1, 2], [3]]
            a = np.asarray([None])  # refused below as not flat
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise DataError(
                f"{arg}[{i}] must be a flat list of integer column indices, got {_short(row)} "
                f"(a list is read as index lists; pass dense rows as np.asarray({arg}))"
            )
        if a.size and a.min() < 0:
            raise DataError(f"{arg}[{i}] holds the negative column index {int(a.min())}; indices start at 0")
        if a.size and a.max() > _INT32_MAX - 1:
            raise DataError(
                f"{arg}[{i}] holds the column index {int(a.max())}; the largest supported is {_INT32_MAX - 1:,}"
            )
        cols.append(a.astype(np.int64).reshape(-1))
        lengths[i] = a.size
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return np.repeat(np.arange(len(rows), dtype=np.int64), lengths), col, len(rows)


def _width(inputs, args, num_words) -> int:
    """The number of input columns: the array width, or num_words, or the largest index + 1 of index lists."""
    widths = {}
    for (kind, value), arg in zip(inputs, args):
        if kind == "dense" or kind == "csr":
            widths[arg] = value.shape[1]
        elif kind == "sparse":
            widths[arg] = value.num_words
    if num_words is not None:
        for arg, w in widths.items():
            if w != num_words:
                raise DataError(f"num_words={num_words} but {arg} has {w} columns")
    if len(set(widths.values())) > 1:
        raise DataError(f"{' and '.join(widths)} have different numbers of columns: {widths}")
    if widths:
        width = next(iter(widths.values()))
    elif num_words is not None:
        width = num_words
    else:
        width = max((int(v[1].max()) + 1 for _, v in inputs if v[1].size), default=0)
    if width < 1:
        raise DataError("x has no columns: pass num_words= for index lists that are all empty, or data with d >= 1")
    for (kind, value), arg in zip(inputs, args):
        if kind == "lists" and value[1].size and value[1].max() >= width:
            raise DataError(
                f"{arg} holds the column index {int(value[1].max())}, but num_words={width} (indices 0..{width - 1})"
            )
    return width


def _finish_inputs(kind: str, value, width: int, arg: str):
    """The Split.x of checked inputs: a SparseMultiHot or a finite float32 array."""
    if kind == "sparse":
        return value
    if kind == "lists":
        rows, cols, n = value
        return multi_hot(rows, cols, n, width)
    if kind == "csr":
        n = value.shape[0]
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(value.indptr))
        return multi_hot(rows, value.indices, n, width)
    with np.errstate(over="ignore", invalid="ignore"):
        dense = value.astype(np.float32)
    if not np.isfinite(dense).all():
        i, j = np.argwhere(~np.isfinite(dense))[0]
        raise DataError(
            f"{arg} holds {value[i, j].item()!r} at row {i}, column {j}: inputs must be finite in float32 (no NaN, inf "
            f"or |value| > {float(np.finfo(np.float32).max):.3g})"
        )
    return dense


def _labels(y, arg: str, n: int) -> np.ndarray:
    """y as a finite numeric 1-D numpy array of length n (bool becomes 0/1)."""
    if isinstance(y, (str, bytes)) or y is None:
        raise DataError(f"{arg} is {_short(y)}; pass the targets as a 1-D array of numbers")
    try:
        a = np.asarray(y)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise DataError(f"{arg} could not be read as an array ({type(e).__name__}: {e})") from e
    if a.ndim != 1:
        raise DataError(f"{arg} must be 1-D [n], got shape {a.shape}; pass {arg}.ravel() for a column of targets")
    if a.size != n:
        raise DataError(f"{arg} has {a.size} targets but its x has {n} rows")
    if a.dtype.kind not in "biuf":
        raise DataError(f"{arg} has dtype {a.dtype}; targets must be numbers (bool, int or float)")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{arg} holds {_first_bad(a, ~np.isfinite(a))}; targets must be finite (no NaN or inf)")
    return a


def _resolve_target(ys, args, target: str, num_classes):
    """(target, num_classes) from the rules in from_arrays' docstring; DataError naming the y that breaks them."""
    if target == "auto":
        if num_classes is not None:
            target = "multiclass"
        elif all(((a == 0) | (a == 1)).all() for a in ys):
            target = "binary"
        elif any(a.dtype.kind == "f" for a in ys):
            target = "regression"
        else:
            for a, arg in zip(ys, args):
                if (a < 0).any():
                    raise DataError(
                        f"{arg} holds the negative label {_first_bad(a, a < 0)}: class labels are 0..C-1; "
                        "shift them, or pass target='regression' if these are numeric targets"
                    )
            target = "multiclass"
    if target != "multiclass" and num_classes is not None:
        raise DataError(f"num_classes={num_classes} is only for target 'multiclass', not {target!r}")
    for a, arg in zip(ys, args):
        if target == "binary" and not ((a == 0) | (a == 1)).all():
            raise DataError(f"{arg} must be 0 or 1 for target 'binary'; found {_first_bad(a, (a != 0) & (a != 1))}")
        if target == "regression":
            big = np.abs(a.astype(np.float64)) > float(np.finfo(np.float32).max)
            if big.any():
                raise DataError(f"{arg} holds {_first_bad(a, big)}, which overflows float32")
        if target == "multiclass":
            fraction = a != np.round(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
            if fraction.any():
                raise DataError(f"{arg} holds the non-integer label {_first_bad(a, fraction)}; class labels are 0..C-1")
            if (a < 0).any():
                raise DataError(f"{arg} holds the negative label {_first_bad(a, a < 0)}; class labels are 0..C-1")
    if target == "multiclass":
        largest, arg = max((int(a.max()), arg) for a, arg in zip(ys, args))
        if num_classes is None:
            if largest + 1 > MAX_CLASSES:
                raise DataError(_too_many_classes(arg, largest + 1, f"holds the label {largest}, so"))
            num_classes = max(largest + 1, 2)
        for a, arg in zip(ys, args):
            if (a >= num_classes).any():
                raise DataError(
                    f"{arg} holds the label {_first_bad(a, a >= num_classes)}, out of range for "
                    f"num_classes={num_classes} (labels 0..{num_classes - 1})"
                )
    return target, num_classes


def _too_many_classes(arg: str, classes: int, given: str = "=") -> str:
    """The one line refusing more classes than MAX_CLASSES, before any model is built."""
    what = f"{arg}={classes!r}" if given == "=" else f"{arg} {given} {classes:,} classes"
    return (
        f"{what} is more than the {MAX_CLASSES:,} classes jaxreg supports: every model would hold a "
        f"[width, {classes:,}] output layer and every step [batch, {classes:,}] logits; use at most {MAX_CLASSES:,} "
        "classes (labels 0..C-1), or target='regression' for numeric targets"
    )


def _holdout_count(holdout, n: int) -> int:
    """The number of held-out rows: a fraction in (0, 1) of n, rounded, or an int count; 1..n-1."""
    if is_int(holdout):
        count = int(holdout)
    elif is_number(holdout) and isinstance(holdout, numbers.Real) and 0 < float(holdout) < 1:
        count = int(round(float(holdout) * n))
    else:
        raise DataError(f"holdout={holdout!r} must be a fraction in (0, 1) or a row count (an int)")
    if not 1 <= count <= n - 1:
        raise DataError(
            f"holdout={holdout!r} holds out {count} of the {n} rows of x; it must leave at least one row for "
            "each of train and validation (pass validation=(x_val, y_val) for small data)"
        )
    return count
