"""IMDB sentiment data as sparse multi-hot rows (Deep Learning with Python, section 4.4).

The data classes (SparseMultiHot, Split, Dataset, DataError) and ``from_arrays`` live in
``jaxreg.dataset`` and are re-exported here; this module reads and encodes IMDB and makes
the synthetic stand-in, both through ``jaxreg.dataset``'s shared construction.

Where the data comes from (``load_imdb``):

* ``source="archive"``: the official ``aclImdb_v1.tar.gz`` or its labeled part
  ``aclImdb_v1_labeled.tar.gz``, streamed (``tarfile`` mode ``"r|"`` over ``gzip.GzipFile``,
  which, unlike ``"r|gz"``, checks the CRC-32 trailer; nothing is extracted to disk). Only
  ``{train,test}/{pos,neg}/<id>_<rating>.txt`` members are read; ``unsup``, ``.feat``
  files and URL lists are ignored.
* ``source="folder"``: an extracted ``aclImdb`` directory, or the directory holding it.
* ``source="tfds"``: tensorflow-datasets' ``imdb_reviews`` (``pip install "jaxreg[tfds]"``,
  internet on first use); ``path`` is not used.
* ``source="auto"`` (default): ``"archive"`` for a file, ``"folder"`` for a directory.

Path resolution: the ``path`` argument, else the environment variable ``JAXREG_DATA``,
else a ``DataError``. Reviews are ordered by split, then label (neg before pos), then
the numeric id of the file name, so the order never depends on the archive's order.

Tokenizer (``tokenize``, version ``TOKENIZER_VERSION``): lowercase; HTML line breaks
``<br />``, ``<br/>``, ``<br>`` become spaces; tokens are the matches of
``[a-z0-9]+(?:'[a-z0-9]+)*`` (so "don't" is one token; punctuation and non-ASCII letters
separate tokens).

Encoding (Keras convention): 0 padding, 1 start marker, 2 out of vocabulary; the
vocabulary ranks the TRAIN split's words by total count, descending, ties alphabetical,
and the word of rank r gets index r + 3 while r + 3 < num_words. A review's multi-hot row
is the sorted set of distinct indices of ``[START] + word indices``: 1 always, 2 when
some word is out of vocabulary, 0 never.

Validation protocols: ``"test"`` (the book's: the TEST set is the validation set) and
``"holdout"`` (seeded ``holdout_size`` reviews of train become validation). With
``"holdout"`` the vocabulary is still ranked on the full train split, held-out reviews
included: the ranking uses word counts only, never labels, and it lets both protocols
share one cached encoding. With ``"holdout"`` the test split is kept as ``Dataset.test``:
evaluated every epoch and reported apart (history columns ``test_*``), never used to choose.

Cache: one ``.npz`` per (source checksum, num_words, tokenizer version, cache format)
under ``cache_dir`` (default: env ``JAXREG_CACHE``, else ``jaxreg.cache.cache_dir()``:
``$XDG_CACHE_HOME/jaxreg`` or ``~/.cache/jaxreg``), holding the
encoded full train and test splits. The checksum is the sha256 of the archive file; for
a folder it is a sha256 over the sorted relative paths, sizes and mtimes of its review
files (an edit that keeps both size and mtime goes unnoticed; touch the file to refresh);
for tfds it is a sha256 over the review texts and labels. Writes are atomic; a corrupt
cache file is ignored with a warning and rewritten. Old cache files are never deleted.
"""

from __future__ import annotations

import array
import collections
import functools
import gzip
import hashlib
import io
import itertools
import os
import re
import stat
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxreg import cache
from jaxreg.checks import is_int
from jaxreg.dataset import (  # noqa: F401 - re-exported: `from jaxreg.data import Dataset` keeps working
    TARGETS,
    DataError,
    Dataset,
    SparseMultiHot,
    Split,
    densify,
    from_arrays,
    holdout_indices,
    index_dtype,
    multi_hot,
)
from jaxreg.fileio import atomic_write

DEFAULT_NUM_WORDS = 10_000
MAX_NUM_WORDS = int(np.iinfo(np.int32).max)  # word indices are int16 or int32 (see _index_dtype)
PAD, START, OOV, FIRST_WORD = 0, 1, 2, 3
TOKENIZER_VERSION = 1
CACHE_FORMAT = 1
SOURCES = ("auto", "archive", "folder", "tfds")
PROTOCOLS = {"test": "test-as-validation", "holdout": "holdout"}

_SPLITS = ("train", "test")
_LABELS = ("neg", "pos")
_TFDS_BATCH = 4096  # reviews per batch read from tensorflow-datasets
IMDB_REVIEWS = 50_000  # labeled reviews, train and test: what a progress bar over the archive expects
_BR_RE = re.compile(r"<br\s*/?>")
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_REVIEW_NAME_RE = re.compile(r"(\d+)(?:_\d+)?\.txt$")
_TARFILE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, gzip.BadGzipFile)


def tokenize(text: str) -> list[str]:
    """Splits a review into lowercase word tokens (rules in the module docstring)."""
    return _TOKEN_RE.findall(_BR_RE.sub(" ", text.lower()))


def tokenizer_settings() -> dict:
    """What `tokenize` and the encoding do, JSON-ready: a run folder's vocabulary.json records them with its words."""
    return {
        "version": TOKENIZER_VERSION,
        "lowercase": True,
        "line_breaks": {"pattern": _BR_RE.pattern, "becomes": " "},
        "token_pattern": _TOKEN_RE.pattern,
        "indices": {"padding": PAD, "start": START, "out_of_vocabulary": OOV, "first_word": FIRST_WORD},
    }


def load_imdb(
    path=None,
    *,
    num_words: int = DEFAULT_NUM_WORDS,
    source: str = "auto",
    validation: str = "test",
    holdout_size: int = 10_000,
    seed: int = 0,
    cache_dir=None,
    use_cache: bool = True,
    progress: bool = False,
) -> Dataset:
    """Loads IMDB as sparse multi-hot splits (see the module docstring for every rule).

    progress: when the reviews must be read (no cache file yet, ~15 s), say so on stderr
    with a progress bar over them; a cache hit prints nothing.
    """
    if not isinstance(source, str) or source not in SOURCES:
        raise DataError(f"unknown source {source!r}; use one of {', '.join(map(repr, SOURCES))}")
    _check_arguments(path, validation, holdout_size, seed)
    _check_num_words(num_words)

    if source == "tfds":
        texts, description = _tfds_texts(), "tensorflow-datasets imdb_reviews"
        checksum = "tfds:" + _texts_checksum(texts)
        records = functools.partial(iter, texts)
    else:
        path, source = _resolve_path(path, source)
        if source == "archive":
            checksum, description = _sha256_file(path), f"archive {path}"
            records = functools.partial(_archive_records, path, checksum)
        else:
            root = _aclimdb_root(path)
            checksum, description = "folder:" + _folder_fingerprint(root), f"folder {root}"
            records = functools.partial(_folder_records, root)

    cache_file = _cache_file(cache_dir, checksum, num_words) if use_cache else None
    arrays = _read_cache(cache_file, checksum, num_words) if cache_file else None
    if arrays is None:
        later = f"cached afterwards in {cache_file.parent}" if cache_file else "not cached"
        message = f"Reading and encoding the IMDB reviews of {description} (first time; {later})" if progress else None
        total = len(texts) if source == "tfds" else IMDB_REVIEWS
        arrays = _encode(_with_progress(records(), total, message), num_words, description)
        if cache_file:
            _write_cache(cache_file, arrays, checksum, num_words)

    vocabulary = tuple(arrays["vocabulary"].tolist())
    train = _split(arrays, "train", num_words)
    test = _split(arrays, "test", num_words)
    if validation == "test":
        train_split, validation_split, test_split = train, test, None
    else:
        train_rows, holdout_rows = holdout_indices(len(train), holdout_size, seed)
        train_split, validation_split = train.take(train_rows, "train"), train.take(holdout_rows, "holdout")
        test_split = test  # evaluated every epoch, reported apart, never used to choose
        description += f", holdout_size={holdout_size}, seed={seed}"
    return Dataset(
        train=train_split,
        validation=validation_split,
        protocol=PROTOCOLS[validation],
        num_words=num_words,
        source=description,
        checksum=checksum,
        vocabulary=vocabulary,
        test=test_split,
    )


def synthetic_dataset(
    n_train: int = 2000,
    n_validation: int = 1000,
    num_words: int = 1000,
    *,
    words_per_review=(20, 120),
    n_signal_words: int = 50,
    label_noise: float = 0.05,
    seed: int = 0,
    n_test: int = 0,
) -> Dataset:
    """IMDB-shaped data with a planted sparse signal, for fast tests and smoke runs.

    Each review draws between words_per_review[0] and words_per_review[1] words (with
    replacement) from a Zipf-like distribution over indices 3..num_words-1; START is always
    present. n_signal_words frequent words carry weights of random sign; the label is 1 when
    the summed weight of a review's distinct words exceeds its expectation (so labels are
    about balanced), flipped with probability label_noise. Deterministic from the arguments.
    n_test > 0 adds a test split of that many reviews (`Dataset.test`), drawn after the other
    two, which stay as they are without it.
    """
    _check_num_words(num_words)
    lo, hi = words_per_review
    n_vocab = num_words - FIRST_WORD
    problems = [
        msg
        for bad, msg in [
            (n_train < 1 or n_validation < 1, "n_train and n_validation must be >= 1"),
            (not isinstance(n_test, int) or n_test < 0, f"n_test={n_test!r} must be an integer >= 0"),
            (not 0 <= lo <= hi, f"words_per_review={words_per_review} must be (lo, hi) with 0 <= lo <= hi"),
            (not 0 < n_signal_words <= n_vocab, f"n_signal_words={n_signal_words} must be in 1..num_words-3={n_vocab}"),
            (not 0.0 <= label_noise <= 0.5, f"label_noise={label_noise} must be in [0, 0.5]"),
        ]
        if bad
    ]
    if problems:
        raise DataError("synthetic_dataset: " + "; ".join(problems))

    rng = np.random.default_rng(seed)
    freq = 1.0 / (np.arange(n_vocab) + 10.0)
    freq /= freq.sum()
    signal_pool = min(max(4 * n_signal_words, n_vocab // 5), n_vocab)
    signal = rng.choice(signal_pool, size=n_signal_words, replace=False) + FIRST_WORD
    weights = np.zeros(num_words)
    weights[signal] = rng.choice([-1.0, 1.0], size=n_signal_words) * rng.uniform(0.5, 1.5, size=n_signal_words)
    # Centre the score on its expectation (P(word present) averaged over review lengths), so labels are balanced.
    keep = 1.0 - freq  # P(word absent) after k draws is keep**k; average the geometric series over k in lo..hi
    present = 1.0 - (keep**lo - keep ** (hi + 1)) / (freq * (hi - lo + 1))
    offset = weights[FIRST_WORD:] @ present

    def make(n: int, name: str) -> Split:
        counts = rng.integers(lo, hi + 1, size=n)
        words = rng.choice(n_vocab, size=int(counts.sum()), p=freq) + FIRST_WORD
        x = _rows_to_csr(words, counts, num_words)
        score = np.add.reduceat(weights[x.indices], x.indptr[:-1]) - offset
        y = np.where(score == 0, rng.integers(0, 2, size=n), score > 0)
        flip = rng.random(n) < label_noise
        return Split(x, np.where(flip, 1 - y, y).astype(np.float32), name)

    train, validation = make(n_train, "train"), make(n_validation, "validation")
    test = make(n_test, "test") if n_test else None
    params = (n_train, n_validation, num_words, tuple(words_per_review), n_signal_words, label_noise, seed)
    params += (n_test,) if n_test else ()  # without a test split, the checksum is as before
    return Dataset(
        train=train,
        validation=validation,
        protocol="synthetic",
        num_words=num_words,
        source="synthetic_dataset" + repr(params),
        checksum="synthetic:" + hashlib.sha256(repr(params).encode()).hexdigest(),
        vocabulary=tuple(f"w{i}" for i in range(FIRST_WORD, num_words)),
        test=test,
    )


# --- reading --------------------------------------------------------------------------

Record = tuple[str, int, tuple, str]  # (split, label 0/1, sort key, text)


def _check_num_words(num_words: int) -> None:
    if not is_int(num_words):
        raise DataError(
            f"num_words={num_words!r} must be an integer, not {type(num_words).__name__} "
            f"(an int num_words >= 4; the book uses {DEFAULT_NUM_WORDS})"
        )
    if num_words < 4:
        raise DataError(
            f"num_words={num_words!r} is too small: indices 0-2 are reserved (padding, start, "
            f"out-of-vocabulary), so pass an integer num_words >= 4 (the book uses {DEFAULT_NUM_WORDS})"
        )
    if num_words > MAX_NUM_WORDS:
        raise DataError(
            f"num_words={num_words!r} is too large: word indices are stored as int32, so the largest "
            f"supported num_words is {MAX_NUM_WORDS:,} (the book uses {DEFAULT_NUM_WORDS})"
        )


def _check_arguments(path, validation, holdout_size, seed) -> None:
    """Types and ranges of load_imdb's arguments, each error naming the argument and value."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise DataError(f"path={path!r} must be a str or os.PathLike (the archive or folder), or None")
    if path is not None and not str(os.fspath(path)).strip():
        raise DataError(
            f"path={path!r} is empty: pass the aclImdb archive or folder (an empty path is not the current folder)"
        )
    if not isinstance(validation, str) or validation not in PROTOCOLS:
        raise DataError(
            f"unknown validation protocol {validation!r}; use 'test' (the book's: test set as "
            "validation set) or 'holdout' (hold out part of the train split)"
        )
    for name, value, least in (("holdout_size", holdout_size, 1), ("seed", seed, 0)):
        if not is_int(value) or value < least:
            raise DataError(f"{name}={value!r} must be an integer >= {least}")


_FILE_KINDS = {
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
}


def _stat(path: Path) -> os.stat_result | None:
    """os.stat of the path (following links); None when it does not exist; DataError when it cannot be reached."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DataError(f"cannot access {str(path)!r} ({e.strerror or e}); check its permissions") from e
    except ValueError as e:  # e.g. an embedded NUL character
        raise DataError(f"IMDB data path {str(path)!r} is not a valid path ({e})") from e


def _is_dir(path: Path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _scandir(folder: Path):
    try:
        return os.scandir(folder)
    except OSError as e:
        raise DataError(f"cannot read the folder {str(folder)!r} ({e.strerror or e}); check its permissions") from e


def _resolve_path(path, source: str) -> tuple[Path, str]:
    if path is None:
        path = os.environ.get("JAXREG_DATA")
        if not path:
            raise DataError(
                "no IMDB data path: pass load_imdb(path=...) with the aclImdb .tar.gz archive or "
                "extracted folder, or set the environment variable JAXREG_DATA; online users can "
                "pass source='tfds' instead"
            )
    if not str(os.fspath(path)).strip():
        raise DataError(
            f"IMDB data path {str(path)!r} is empty: pass the aclImdb archive or folder, or fix JAXREG_DATA"
        )
    path = Path(
        os.path.expanduser(os.fspath(path))
    )  # "~user" of an unknown user stays as given (Path.expanduser raises)
    st = _stat(path)
    if st is None:
        raise DataError(
            f"IMDB data path {str(path)!r} does not exist: pass the path of aclImdb_v1.tar.gz "
            "(or the labeled part) or of an extracted aclImdb folder, or fix JAXREG_DATA"
        )
    special = next((kind for test, kind in _FILE_KINDS.items() if test(st.st_mode)), None)
    if special or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise DataError(
            f"IMDB data path {str(path)!r} is {special or 'not a regular file or folder'}: "
            "pass the aclImdb .tar.gz archive or the extracted folder"
        )
    is_dir = stat.S_ISDIR(st.st_mode)
    if source == "auto":
        source = "folder" if is_dir else "archive"
    if source == "archive" and is_dir:
        raise DataError(f"{str(path)!r} is a directory, not an archive: use source='folder' or 'auto'")
    if source == "folder" and not is_dir:
        raise DataError(f"{str(path)!r} is a file, not a folder: use source='archive' or 'auto'")
    return path, source


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r} ({e}); check the path and its permissions") from e
    return h.hexdigest()


def _review_key(name: str) -> tuple | None:
    match = _REVIEW_NAME_RE.fullmatch(name)
    return None if match is None else (int(match.group(1)), name)


def _split_and_label(parts: list[str]) -> tuple[str, int] | None:
    if len(parts) >= 3 and parts[-3] in _SPLITS and parts[-2] in _LABELS:
        return parts[-3], _LABELS.index(parts[-2])
    return None


class _HashingReader:
    """A read-only file wrapper that hashes every byte read through it."""

    def __init__(self, f):
        self._f, self.hash = f, hashlib.sha256()

    def read(self, size=-1):
        data = self._f.read(size)
        self.hash.update(data)
        return data

    def read_rest(self) -> None:
        while self.read(1 << 20):
            pass


def _archive_records(path: Path, checksum: str) -> Iterator[Record]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read the archive {str(path)!r} ({e}); check the path and its permissions") from e
    with f:
        reader = _HashingReader(f)
        try:
            gz = gzip.GzipFile(fileobj=reader, mode="rb")
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                seen: dict[tuple, str] = {}  # (split, label, review key) -> the member that held it
                for member in tar:
                    if not member.isfile():
                        continue
                    parts = member.name.split("/")
                    split_label = _split_and_label(parts)
                    key = _review_key(parts[-1])
                    if split_label is None or key is None:
                        continue
                    _check_unique_member(path, seen, (*split_label, key), member.name)
                    text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    yield (*split_label, key, text)
            while gz.read(1 << 20):  # to the end, so that gzip checks its CRC-32 trailer
                pass
            reader.read_rest()
        except _TARFILE_ERRORS as e:
            raise DataError(
                f"the archive {str(path)!r} is truncated or corrupt ({type(e).__name__}: {e}); "
                "download it again and compare its sha256 with the published one"
            ) from e
    if reader.hash.hexdigest() != checksum:
        raise DataError(f"the archive {str(path)!r} changed while it was being read; load it again")


def _check_unique_member(path: Path, seen: dict, review: tuple, member: str) -> None:
    """DataError when a review's file is in the archive twice (an archive appended to, or packed with a path
    given twice): read as it is, every repeated review would count twice in training and validation."""
    first = seen.get(review)
    if first is None:
        seen[review] = member
    else:
        again = "again" if first == member else f"also as {member!r}"
        raise DataError(
            f"the archive {str(path)!r} holds the review {first!r} twice ({again}); each review must be in it once: "
            "download the archive again, or repack it without repeated members"
        )


def _aclimdb_root(path: Path) -> Path:
    root = path / "aclImdb" if _is_dir(path / "aclImdb") else path
    missing = [f"{s}/{lab}" for s in _SPLITS for lab in _LABELS if not _is_dir(root / s / lab)]
    if missing:
        raise DataError(
            f"{str(path)!r} is not an aclImdb folder: missing subfolder(s) {', '.join(missing)}; "
            "pass the extracted aclImdb directory (with train/pos, train/neg, test/pos, test/neg) "
            "or the directory that contains it"
        )
    return root


def _folder_reviews(root: Path) -> Iterator[tuple[str, int, tuple, Path]]:
    for split in _SPLITS:
        for label, label_name in enumerate(_LABELS):
            with _scandir(root / split / label_name) as entries:
                for entry in entries:
                    key = _review_key(entry.name)
                    if key is not None and entry.is_file():
                        yield split, label, key, Path(entry.path)


def _folder_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for *_, file in sorted(_folder_reviews(root)):
        st = _stat(file)
        if st is None:
            raise DataError(f"{str(file)!r} disappeared while the folder was being read; load it again")
        h.update(f"{file.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _folder_records(root: Path) -> Iterator[Record]:
    for split, label, key, file in _folder_reviews(root):
        try:
            text = file.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"cannot read {str(file)!r} ({e}); check the file and its permissions") from e
        yield split, label, key, text


def _tfds_texts() -> list[Record]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            'source="tfds" needs tensorflow-datasets: pip install "jaxreg[tfds]" (it downloads '
            "imdb_reviews from the internet the first time); offline, pass the path of the aclImdb archive instead"
        ) from e
    records = []
    for split in _SPLITS:
        # Batches of a fixed size, not batch_size=-1: that asks for one batch of the split's
        # recorded size, and where none is recorded (tfds.testing.mock_data) for one of
        # sys.maxsize rows, which aborts the process inside TensorFlow.
        try:
            batches = tfds.as_numpy(tfds.load("imdb_reviews", split=split, batch_size=_TFDS_BATCH, as_supervised=True))
            pairs = [(text, label) for texts, labels in batches for text, label in zip(texts, labels)]
        except Exception as e:  # noqa: BLE001 - download, checksum and file errors of any kind: one line
            detail = (str(e).strip().splitlines() or [""])[0][:300]
            raise DataError(
                f"tensorflow-datasets could not load imdb_reviews ({type(e).__name__}: {detail}); it downloads and "
                "checks the data the first time (internet needed); offline, pass the path of the aclImdb archive instead"
            ) from e
        for i, (text, label) in enumerate(pairs):
            records.append((split, int(label), (i, ""), text.decode("utf-8", errors="replace")))
    return records


def _texts_checksum(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for split, label, _key, text in records:
        h.update(f"{split}\0{label}\0{len(text)}\0".encode())
        h.update(text.encode("utf-8"))
    return h.hexdigest()


# --- encoding -------------------------------------------------------------------------


def _with_progress(records: Iterable[Record], total: int, message: str | None) -> Iterator[Record]:
    """The records; with a message, it and a tqdm bar over them go to stderr from the first record on.

    Not before: a file that is no archive fails at once, and its error stays the only line.
    The bar ends full should `total` be off; an error on the way removes it.
    """
    records = iter(records)
    first = next(records, None)
    if first is None:
        return
    if message is None:
        yield first
        yield from records
        return
    print(message, file=sys.stderr, flush=True)
    with tqdm(total=total, unit=" reviews", file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for record in itertools.chain([first], records):
                yield record
                bar.update()
        except BaseException:
            bar.leave = False
            raise
        bar.total = bar.n


def _encode(records: Iterable[Record], num_words: int, description: str) -> dict[str, np.ndarray]:
    """Tokenizes reviews to word ids on the fly (no token strings kept), then encodes with numpy."""
    word_ids = collections.defaultdict(itertools.count().__next__)
    lookup = word_ids.__getitem__
    reviews: dict[str, list] = {split: [] for split in _SPLITS}
    for split, label, key, text in records:
        ids = array.array("i", map(lookup, tokenize(text)))
        reviews[split].append((label, key, ids))

    missing = [
        f"{split}/{_LABELS[label]}"
        for split in _SPLITS
        for label in (0, 1)
        if not any(r[0] == label for r in reviews[split])
    ]
    if missing:
        raise DataError(
            f"no reviews found in {', '.join(missing)} of {description}; expected files like "
            "aclImdb/train/pos/<id>_<rating>.txt: check that the data is complete"
        )

    streams = {}
    for split in _SPLITS:
        reviews[split].sort(key=lambda r: (r[0], r[1]))
        lengths = np.array([len(r[2]) for r in reviews[split]], dtype=np.int64)
        ids = np.frombuffer(b"".join(r[2].tobytes() for r in reviews[split]), dtype=np.int32)
        labels = np.array([r[0] for r in reviews[split]], dtype=np.float32)
        streams[split] = (ids, lengths, labels)

    words = np.array(list(word_ids), dtype=str)
    counts = np.bincount(streams["train"][0], minlength=len(words))
    ranked = np.lexsort((words, -counts))[: min(num_words - FIRST_WORD, int(np.count_nonzero(counts)))]
    lut = np.full(len(words), OOV, dtype=np.int64)
    lut[ranked] = np.arange(FIRST_WORD, FIRST_WORD + ranked.size)

    out = {"vocabulary": words[ranked]}
    for split, (ids, lengths, labels) in streams.items():
        x = _rows_to_csr(lut[ids], lengths, num_words)
        out[f"{split}_indptr"], out[f"{split}_indices"], out[f"{split}_y"] = x.indptr, x.indices, labels
    return out


_index_dtype = index_dtype


def _rows_to_csr(cols: np.ndarray, lengths: np.ndarray, num_words: int) -> SparseMultiHot:
    """CSR multi-hot rows of [START] + cols, where row i owns the next lengths[i] entries of cols."""
    n = lengths.size
    rows = np.arange(n, dtype=np.int64)
    return multi_hot(
        np.concatenate([rows, np.repeat(rows, lengths)]),
        np.concatenate([np.full(n, START, np.int64), np.asarray(cols, np.int64)]),
        n,
        num_words,
    )


def _split(arrays: dict[str, np.ndarray], split: str, num_words: int) -> Split:
    x = SparseMultiHot(arrays[f"{split}_indptr"], arrays[f"{split}_indices"], num_words)
    return Split(x, arrays[f"{split}_y"], split)


# --- cache ----------------------------------------------------------------------------

_ARRAY_NAMES = ("vocabulary",) + tuple(f"{s}_{a}" for s in _SPLITS for a in ("indptr", "indices", "y"))


def _cache_file(cache_dir, checksum: str, num_words: int) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("JAXREG_CACHE") or cache.cache_dir()
    key = hashlib.sha256(f"{checksum}|{num_words}|{TOKENIZER_VERSION}|{CACHE_FORMAT}".encode()).hexdigest()
    return Path(cache_dir).expanduser() / f"imdb-{key[:24]}.npz"


def _meta(checksum: str, num_words: int) -> str:
    return f"checksum={checksum};num_words={num_words};tokenizer={TOKENIZER_VERSION};format={CACHE_FORMAT}"


def _read_cache(file: Path, checksum: str, num_words: int) -> dict[str, np.ndarray] | None:
    if not file.exists():
        return None
    try:
        with np.load(file, allow_pickle=False) as npz:
            if str(npz["meta"]) != _meta(checksum, num_words):
                raise ValueError("cache metadata does not match the request")
            arrays = {name: npz[name] for name in _ARRAY_NAMES}
        for split in _SPLITS:
            indptr, indices, y = (arrays[f"{split}_{a}"] for a in ("indptr", "indices", "y"))
            if indices.dtype != _index_dtype(num_words) or indptr.size != y.size + 1:
                raise ValueError(f"inconsistent {split} arrays")
            if indices.size and (indices.min() < START or indices.max() >= num_words):
                raise ValueError(f"{split} indices out of range")
            SparseMultiHot(indptr, indices, num_words)
        return arrays
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable IMDB cache file {file} ({e}); it will be rebuilt", stacklevel=3)
        return None


def _write_cache(file: Path, arrays: dict[str, np.ndarray], checksum: str, num_words: int) -> None:
    buffer = io.BytesIO()  # ~14 MB for the full IMDB; written in one piece, atomically
    np.savez(buffer, meta=np.array(_meta(checksum, num_words)), **arrays)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, buffer.getvalue())
    except OSError as e:
        warnings.warn(f"could not write the IMDB cache file {file} ({e}); loading works, but uncached", stacklevel=3)
