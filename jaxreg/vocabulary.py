"""The words a run's model reads: a run folder's vocabulary.json, written and read, and new text encoded with it.

A run on IMDB or synthetic data writes `vocabulary.json` beside its parameters, so that new text
can be turned into the model's input without the data it trained on:

    {"format": 1, "num_words": 10000, "target": "binary", "data_checksum": "...",
     "tokenizer": {"version": 1, "lowercase": true, "line_breaks": {...}, "token_pattern": "...",
                   "indices": {"padding": 0, "start": 1, "out_of_vocabulary": 2, "first_word": 3}},
     "words": {"the": 3, "and": 4, ...}}

`words` maps each of the num_words - 3 most frequent train words to its input column (Keras'
convention, `jaxreg.data`'s encoding); `tokenizer` is `jaxreg.data.tokenizer_settings()`. Data given
as arrays (`from_arrays`) has no text, hence no vocabulary and no file. `Vocabulary.encode` makes
the multi-hot rows the data's own reviews got: START always, each known word's column, OUT OF
VOCABULARY when some word is not known.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxreg import data, fileio, runfolder
from jaxreg.dataset import Dataset, SparseMultiHot, multi_hot
from jaxreg.errors import SweepError

VOCABULARY_FILE = "vocabulary.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A run's words (word -> input column), its number of input columns and its task (`Dataset.target`)."""

    words: Mapping[str, int]
    num_words: int
    target: str = "binary"

    def encode(self, texts: Sequence[str]) -> SparseMultiHot:
        """Multi-hot rows [len(texts), num_words] of the texts, tokenized and indexed as the run's data was."""
        rows, cols = [], []
        for row, text in enumerate(texts):
            columns = {self.words.get(token, data.OOV) for token in data.tokenize(text)} | {data.START}
            rows.extend([row] * len(columns))
            cols.extend(columns)
        return multi_hot(np.array(rows, np.int64), np.array(cols, np.int64), len(texts), self.num_words)


def of_dataset(dataset: Dataset) -> Vocabulary | None:
    """The dataset's vocabulary (its word of rank r is column r + 3), or None for data without text."""
    if not dataset.vocabulary or not dataset.sparse:
        return None
    words = {word: data.FIRST_WORD + rank for rank, word in enumerate(dataset.vocabulary)}
    return Vocabulary(words, dataset.num_words, dataset.target)


def save_vocabulary(folder, dataset: Dataset) -> bool:
    """Write the dataset's vocabulary.json into the run folder (recorded in its manifest first); False, and no file,
    for data without text."""
    vocabulary = of_dataset(dataset)
    if vocabulary is None:
        return False
    folder = Path(folder)
    runfolder.record(folder, VOCABULARY_FILE)
    content = {
        "format": FORMAT,
        "num_words": vocabulary.num_words,
        "target": vocabulary.target,
        "data_checksum": dataset.checksum,
        "tokenizer": data.tokenizer_settings(),
        "words": dict(vocabulary.words),
    }
    fileio.write_json(folder / VOCABULARY_FILE, content)
    return True


def load_vocabulary(folder) -> Vocabulary:
    """The run folder's vocabulary; SweepError (one line) when it has none, or one this jaxreg cannot use."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        raise SweepError(
            f"{folder} has no {VOCABULARY_FILE}, so new text cannot be encoded for its models: the run was made by "
            "a jaxreg that did not save it (run it again), or on data given as arrays, which has no text"
        )
    try:
        content = fileio.read_json(path)
        words, num_words = content["words"], content["num_words"]
        settings = content["tokenizer"]
        version, indices = settings["version"], settings["indices"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"cannot read {path} ({type(e).__name__}: {e}); run the study again with --overwrite") from e
    expected = data.tokenizer_settings()
    if content.get("format") != FORMAT or version != expected["version"] or indices != expected["indices"]:
        raise SweepError(
            f"{path} was written with tokenizer version {version!r} (format {content.get('format')!r}); this jaxreg "
            f"encodes text with version {expected['version']} (format {FORMAT}): run the study again with this jaxreg"
        )
    _check_words(path, words, num_words)
    return Vocabulary(words, num_words, content.get("target", "binary"))


def _check_words(path: Path, words, num_words) -> None:
    """SweepError when the words are not a map of strings to columns from 3 to num_words - 1."""
    if not isinstance(num_words, int) or not isinstance(words, dict):
        raise SweepError(f"{path} is damaged: num_words and words must be an integer and a map; run the study again")
    bad = next((w for w, i in words.items() if type(i) is not int or not data.FIRST_WORD <= i < num_words), None)
    if bad is not None:
        raise SweepError(
            f"{path} is damaged: the word {json.dumps(bad)} has column {words[bad]!r}, not one from "
            f"{data.FIRST_WORD} to {num_words - 1}; run the study again"
        )
