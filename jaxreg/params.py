"""Trained parameters in a run folder: each variant's and seed's final and best-epoch parameters.

params/<variant>/seed_<seed>.final.msgpack   after the last epoch
params/<variant>/seed_<seed>.best.msgpack    after its best epoch: the lowest validation data
                                             loss of that seed before it diverged (the summary's
                                             definition, per seed); absent when it diverged
                                             from epoch 1

Each file is `flax.serialization.msgpack_serialize` of the parameter tree at the variant's
true widths (the padding it trained with cut off): {"params": {"hidden_0": {"kernel",
"bias"}, ..., "output": {...}}} of float32 arrays, which `jaxreg.model.MLP(widths).apply`
takes as is. `<variant>` is the variant's name, percent-encoded where a character is not a
letter, digit or one of -_.~=+ (as urllib.parse.quote). Read one back with `load_params`:

    from jaxreg.outfolders import latest_folder
    from jaxreg.params import load_params
    params = load_params(latest_folder("runs/book"), "smaller", seed=0, which="best")
    logits = MLP((6, 6)).apply(params, multi_hot_batch)

Beside each file, `<file>.sha256` holds its sha256 in `sha256sum` format ("<hex>  <file name>"):
`load_params` refuses a file that does not match it, naming the file, and loads a file without one
(written by an older jaxreg) unchecked. Without jaxreg, `cd params/<variant> && sha256sum -c *.sha256`
checks them; the .msgpack files stay plain flax msgpack.

`exact_zero_fractions(folder)` counts the entries that are exactly 0 in the hidden kernels of
every variant (what proximal L1 makes; a penalty added to the loss never does).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

import flax.serialization
import numpy as np
from flax import traverse_util

from jaxreg import fileio, runfolder
from jaxreg.checks import is_int
from jaxreg.errors import SweepError
from jaxreg.networks import default_penalized
from jaxreg.specs import MAX_SEED

PARAMS_DIR = "params"
WHICH = ("final", "best")
CHECKSUM_SUFFIX = ".sha256"


def params_file(variant: str, seed: int, which: str = "final") -> str:
    """The file of a variant's and seed's parameters, relative to the run folder ("/"-separated)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    name = urllib.parse.quote(variant, safe="-_.~=+")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    return f"{PARAMS_DIR}/{name}/seed_{int(seed)}.{which}.msgpack"


def save_params(folder, trained, best_epochs: dict | None = None, record: bool = True) -> list[str]:
    """Write {(name, seed): variants.TrainedParams} into the folder, every file recorded in the manifest first.

    `trained` with `held_here()` (`variants.TrainedParamsMap`) writes only the variants this process's devices
    hold, read one device's shard at a time: in a run of many processes each writes its own variants' files
    (the run folder on a file system all of them see, as the checkpoint needs), so no host ever holds every
    variant's parameters; the alternative, process 0 receiving one variant after another, would add a
    collective per variant. best_epochs: {(name, seed): best epoch or None} of every variant (default: read
    from `trained`), which names the files to record; record: whether this process writes the manifest
    (process 0: before any process writes a file). Returns the files this process wrote."""
    folder = Path(folder)
    if best_epochs is None and record:
        best_epochs = {key: t.best_epoch for key, t in trained.items()}
    if record:
        names = [params_file(n, s, w) for (n, s), e in best_epochs.items() for w in WHICH if w == "final" or e]
        runfolder.record(folder, *(n for name in names for n in (name, name + CHECKSUM_SUFFIX)))
    written = []
    for (name, seed), t in trained.held_here() if hasattr(trained, "held_here") else trained.items():
        for which, tree in (("final", t.final), ("best", t.best)):
            if tree is not None:
                written.append(_write_checked(folder, params_file(name, seed, which), tree))
    return written


def _write_checked(folder: Path, name: str, tree) -> str:
    """Write one parameters file (flax msgpack) and its `.sha256` sidecar, atomically; returns `name`."""
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    data = flax.serialization.msgpack_serialize(tree)
    fileio.atomic_write(folder / name, data)
    fileio.atomic_write(folder / (name + CHECKSUM_SUFFIX), checksum_line(data, Path(name).name))
    return name


def checksum_line(data: bytes, name: str) -> str:
    """The sidecar's content: `sha256sum`'s line for a file `name` holding `data`."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


def read_checked(path: Path) -> bytes:
    """The bytes of a parameters file, checked against its `.sha256` sidecar when it has one; SweepError naming it if damaged."""
    data = path.read_bytes()
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not sidecar.exists():
        return data  # written by a jaxreg before the sidecars: nothing to check against
    try:
        expected = sidecar.read_text(encoding="ascii").split()[0].lower()
    except (OSError, ValueError, IndexError) as e:
        raise SweepError(
            f"cannot check {path}: unreadable {sidecar.name} ({e}); run the study again with --overwrite"
        ) from e
    if hashlib.sha256(data).hexdigest() != expected:
        raise SweepError(
            f"{path} is damaged: its sha256 does not match {sidecar.name}; run the study again with --overwrite"
        )
    return data


def load_params(folder, variant: str, seed: int = 0, which: str = "final") -> dict:
    """A variant's and seed's saved parameters ("final" or "best"), the tree `MLP(its widths).apply` takes.

    SweepError, naming the file, when it is missing, unreadable or does not match its `.sha256` checksum;
    SweepError naming the argument for a variant that is not a string or a seed that is not an integer
    (0.9 would load seed 0).
    """
    _check_load_arguments(variant, seed, which)
    path = Path(folder) / params_file(variant, seed, which)
    if not path.is_file():
        why = "its seed diverged from epoch 1, so it has no best epoch, or " if which == "best" else ""
        raise SweepError(
            f"no {which} parameters for variant {variant!r}, seed {seed}: {path} does not exist "
            f"({why}the run has not finished, or was made by a jaxreg that did not save them)"
        )
    try:
        tree = flax.serialization.msgpack_restore(read_checked(path))
    except (OSError, ValueError) as e:
        raise SweepError(f"cannot read {path}: {e}; run the study again with --overwrite") from e
    return _as_numpy(tree)


def _check_load_arguments(variant, seed, which) -> None:
    """SweepError naming the first of load_params' arguments that cannot name a saved file."""
    if not isinstance(variant, str) or not variant:
        raise SweepError(f"variant={variant!r} must be a variant's name (a non-empty string)")
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise SweepError(f"seed={seed!r} must be an integer from 0 to {MAX_SEED} (a seed the run trained)")
    if which not in WHICH:
        raise SweepError(f"which={which!r} must be one of {WHICH}")


def _as_numpy(tree):
    return {k: _as_numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def exact_zero_fractions(folder, which: str = "final") -> dict[str, float]:
    """{variant: fraction of exactly-zero entries in its hidden kernels, mean over seeds} of a finished run folder.

    Hidden kernels: the leaves `networks.default_penalized` selects, pooled (the study's MLP:
    every hidden layer's kernel, not the output layer, not biases), the ones penalties, decay
    and proximal L1 act on. A model with its own `penalize` rule is still counted by the
    default rule (the folder does not record the rule). SweepError when a file is missing.
    """
    folder = Path(folder)
    config_file = folder / fileio.CONFIG_FILE
    if not config_file.is_file():
        raise SweepError(f"{folder} is not a run folder: {config_file} does not exist")
    config = fileio.read_json(config_file)["config"]
    out = {}
    for variant in (v["name"] for v in config["variants"]):
        fractions = []
        for seed in range(int(config["seeds"])):
            flat = traverse_util.flatten_dict(load_params(folder, variant, seed, which))
            kernels = [leaf for path, leaf in flat.items() if default_penalized(path)]
            if not kernels:
                raise SweepError(f"variant {variant!r}, seed {seed}: its parameters have no hidden kernel")
            fractions.append(sum(np.count_nonzero(k == 0) for k in kernels) / sum(k.size for k in kernels))
        out[variant] = float(np.mean(fractions))
    return out


def has_proximal_l1(folder) -> bool:
    """Whether a run folder's config has a variant with l1_proximal > 0 (the only stage that makes exact zeros)."""
    config_file = Path(folder) / fileio.CONFIG_FILE
    if not config_file.is_file():
        return False
    return any(v.get("l1_proximal", 0) > 0 for v in fileio.read_json(config_file)["config"]["variants"])


def exact_zeros_table(fractions: dict[str, float], which: str = "final") -> str:
    """`exact_zero_fractions` as a Markdown table (readable as plain text), one row per variant."""
    rows = [(name, f"{f:.4f}") for name, f in fractions.items()]
    width = max(len("variant"), *(len(n) for n, _ in rows))
    head = f"exact zeros in hidden kernels ({which}, mean over seeds)"
    lines = [f"| {'variant'.ljust(width)} | {head} |", f"|{'-' * (width + 2)}|{'-' * (len(head) + 2)}|"]
    return "\n".join(lines + [f"| {n.ljust(width)} | {f.ljust(len(head))} |" for n, f in rows])
