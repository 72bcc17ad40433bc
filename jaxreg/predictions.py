"""Predictions on new text from a run folder: `predict(run_folder, texts)` -> each text's probability of label 1.

The texts are encoded with the run's vocabulary.json (`jaxreg.vocabulary`: the tokenizer and
word columns its data was encoded with), then the study's MLP at the variant's widths applies a
seed's saved parameters (`jaxreg.params.load_params`, "best" or "final") in inference mode:
no dropout. On IMDB, label 1 is a positive review. Binary tasks only: the run's own models
(`VariantSpec.model`) and other tasks get a one-line SweepError, as do a folder without a
vocabulary (an older jaxreg's run, data given as arrays) and a variant or seed the run did not train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxreg import fileio, outfolders
from jaxreg.checks import is_int
from jaxreg.dataset import densify
from jaxreg.errors import SweepError
from jaxreg.model import MLP
from jaxreg.params import WHICH, load_params
from jaxreg.vocabulary import load_vocabulary

ROWS_PER_BATCH = 1024  # dense rows of num_words floats at a time: 40 MB for IMDB's 10,000 words


def predict(
    run_folder, texts: Sequence[str], variant: str | None = None, seed: int = 0, which: str = "best"
) -> np.ndarray:
    """Probabilities of label 1 (float32, [len(texts)]) the variant's model, trained with `seed`, gives each text.

    run_folder: a finished run's folder, or a `runs/<preset>` folder whose LATEST file names the newest run.
    variant: a variant's name (default: the run's first); which: "best" (the parameters of its best
    epoch) or "final". SweepError, in one line, for anything that cannot be predicted from.
    """
    folder = run_folder_of(run_folder)
    texts = _checked_texts(texts)
    widths, variant = _variant_widths(folder, variant, seed, which)
    params = load_params(folder, variant, seed, which)  # first: an unfinished run has neither, and this says so
    vocabulary = load_vocabulary(folder)
    if vocabulary.target != "binary":
        raise SweepError(f"predict is for binary tasks only; the run in {folder} has a {vocabulary.target} task")
    rows = params["params"]["hidden_0"]["kernel"].shape[0]
    if rows != vocabulary.num_words:
        raise SweepError(f"{folder}: the parameters read {rows} words, its vocabulary.json {vocabulary.num_words}")
    x = vocabulary.encode(texts)
    model = MLP(tuple(widths))
    batches = [
        jax.nn.sigmoid(model.apply(params, densify(x.take(np.arange(start, min(start + ROWS_PER_BATCH, len(texts)))))))
        for start in range(0, len(texts), ROWS_PER_BATCH)
    ]
    return np.concatenate([np.asarray(b, np.float32) for b in batches]) if batches else np.zeros(0, np.float32)


def run_folder_of(path) -> Path:
    """The run folder `path` names: itself when it holds config.json, else the run its LATEST file names."""
    folder = Path(path)
    if (folder / fileio.CONFIG_FILE).is_file():
        return folder
    if (folder / outfolders.LATEST).is_file() or (folder / outfolders.OLD_LINK).is_symlink():
        latest = outfolders.latest_folder(folder)
        if (latest / fileio.CONFIG_FILE).is_file():
            return latest
        raise SweepError(
            f"{folder}/{outfolders.LATEST} names {latest}, which is not a run folder (no {fileio.CONFIG_FILE})"
        )
    raise SweepError(
        f"{folder} is not a run folder (no {fileio.CONFIG_FILE}) nor a runs/<preset> folder with a {outfolders.LATEST} file"
    )


def _checked_texts(texts) -> list[str]:
    """The texts as a list; SweepError for one string (not a list of them) or an item that is not a string."""
    if isinstance(texts, (str, bytes)):
        raise SweepError("texts must be a list of strings, not one string: pass [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise SweepError(f"texts must be a list of strings, not {type(texts).__name__}") from None
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise SweepError(f"texts[{bad}] is a {type(texts[bad]).__name__}, not a string")
    return texts


def _variant_widths(folder: Path, variant, seed, which) -> tuple[list[int], str]:
    """The widths of the run's variant (its first when None) and its name; SweepError for a variant, seed or
    `which` the run has no parameters for, and for a variant with its own model."""
    try:
        config = fileio.read_json(folder / fileio.CONFIG_FILE)
        variants = {v["name"]: v for v in config["variants"]}
        seeds = list(config["seeds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"cannot read {folder / fileio.CONFIG_FILE} ({type(e).__name__}: {e})") from e
    if variant is None and variants:
        variant = next(iter(variants))
    if variant not in variants:
        raise SweepError(f"variant {variant!r} is not in the run {folder}; its variants: {', '.join(variants)}")
    if not is_int(seed) or seed not in seeds:
        raise SweepError(f"seed={seed!r} is not one of the run's seeds: {', '.join(map(str, seeds))}")
    if which not in WHICH:
        raise SweepError(f"which={which!r} must be one of {', '.join(WHICH)}")
    spec = variants[variant]
    if spec.get("model") is not None:
        raise SweepError(
            f"variant {variant!r} is an own model ({spec['model']}): predict applies the study's MLP only; encode the "
            "texts with jaxreg.vocabulary.load_vocabulary(folder).encode and apply your model to them"
        )
    return list(spec["widths"]), variant
