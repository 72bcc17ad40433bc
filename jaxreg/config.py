"""A study's configuration: `SweepConfig`, validated on construction, and `SweepError` for bad input.

A SweepConfig names the variants (each trained with seeds 0..seeds-1) and everything else
that decides their results; `jaxreg.sweep.run_sweep` trains it into a run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

from jaxreg import losses, views
from jaxreg import variants as V
from jaxreg.checks import is_int, is_number
from jaxreg.errors import SweepError
from jaxreg.selection import DIVERGENCE_THRESHOLD
from jaxreg.specs import clashing_names, name_problem
from jaxreg.train import SCALAR_HYPERPARAMETERS

PRODUCTS = ("auto", "sparse", "dense")
VALIDATIONS = ("test", "holdout")
PLACEMENTS = ("auto", *V.PLACEMENTS)  # see variants.place_buckets
AXES = (
    "width",
    *SCALAR_HYPERPARAMETERS,
    *views.FIELDS,
)  # the VariantSpec fields a sweep can vary ("width": the first hidden width)
# Largest accepted values: a history keeps every epoch; seeds and devices multiply the models;
# batch rows are int32 indices. Whether a run fits in memory is estimated later (jaxreg.memory).
MAXIMA = dict(epochs=V.MAX_EPOCHS, seeds=4096, batch_size=V.MAX_BATCH_SIZE, holdout_size=2**31 - 1, devices=4096)
# Fields that select the data file rather than the experiment; on resume the data checksum is compared instead.
LOCAL_FIELDS = ("data",)
OPTION = "option"  # the field metadata key of a command-line option (see _option)


def _option(help: str, **argparse_settings) -> dict:
    """A field's metadata that makes it a command-line option: its help and argparse settings such as choices and
    metavar (`jaxreg.cli` derives the flag, --field-name, its type and its default from the field itself)."""
    return {OPTION: {"help": help, **argparse_settings}}


def axis_series(variants: Sequence[V.VariantSpec], axis: str) -> dict[str, str]:
    """{variant name: its series}: variants equal but for their name and `axis` form one series
    (e.g. one model at several training-set sizes), labelled by their names' common part before
    its last "_" ("bigger_n500", "bigger_n1100" -> "bigger"); a variant alone keeps its name."""
    field = "widths" if axis == "width" else axis
    groups: dict = {}
    for v in variants:
        key = tuple((f.name, getattr(v, f.name)) for f in dataclasses.fields(v) if f.name not in ("name", field))
        groups.setdefault(key, []).append(v.name)
    labels = {}
    for names in groups.values():
        prefix = os.path.commonprefix(names)
        label = prefix[: prefix.rfind("_")] if "_" in prefix else (prefix or names[0])
        labels.update({n: label if len(names) > 1 else n for n in names})
    return labels


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One study: the variants and everything that decides their results. Validated on construction.

    variants: base specs (seed 0); every one is trained with seeds 0..seeds-1 in one program.
    axis: the VariantSpec field the sweep varies ("width" = first hidden width), for figures
    against it; None for a set of named models (the book). data: archive or folder path
    (None: env JAXREG_DATA); synthetic: offline demo data instead (validation "test").
    devices: how many devices to run on (None: all, see `jaxreg.sweep.select_devices`).
    placement: how buckets use the devices (`variants.place_buckets`): "spread" (each bucket
    whole on one device, buckets on different devices train at the same time), "shard" (every
    bucket's variants sharded over all devices) or "auto" (spread on CPU unless `devices` is
    given, else shard).
    divergence_threshold: a variant has diverged from the first epoch where a loss exceeds
    this in size, or any metric is NaN or infinite (see `jaxreg.selection`).
    """

    name: str
    variants: tuple[V.VariantSpec, ...]
    description: str = ""
    epochs: int = dataclasses.field(default=20, metadata=_option("epochs to train", metavar="N"))
    seeds: int = dataclasses.field(
        default=1, metadata=_option("train every variant N times, seeds 0..N-1, in the same program", metavar="N")
    )
    batch_size: int = dataclasses.field(default=512, metadata=_option("training batch size", metavar="N"))
    loss: str = dataclasses.field(
        default="keras",
        metadata=_option("keras: clipped BCE as the book; logits: stable BCE", choices=losses.LOSS_MODES),
    )
    product: str = dataclasses.field(
        default="auto",
        metadata=_option(
            "first-layer product: sparse embedding bag, dense matmul, or auto (sparse with jaxreg's CPU kernels or "
            "when few first-layer columns, else dense)",
            choices=PRODUCTS,
        ),
    )
    variant_loop: str = dataclasses.field(
        default="auto",
        metadata=_option(
            "a bucket's variants: vmapped, one after the other (map: bit-identical to running alone on one device), "
            "or auto",
            choices=V.VARIANT_LOOPS,
        ),
    )
    validation: str = dataclasses.field(
        default="test",
        metadata=_option(
            "test: the test set is the validation set, as the book does; holdout: hold out --holdout-size reviews "
            "of the train split to choose the epoch; the test set is then evaluated every epoch and reported apart "
            "(test_* columns, summary.md's second table), never used to choose",
            choices=VALIDATIONS,
        ),
    )
    holdout_size: int = dataclasses.field(
        default=10_000, metadata=_option("reviews held out with --validation holdout", metavar="N")
    )
    data: str | None = dataclasses.field(
        default=None,
        metadata=_option(
            "IMDB data: the aclImdb .tar.gz archive or extracted folder, or the word tfds for tensorflow-datasets' "
            'imdb_reviews (pip install "jaxreg[tfds]"; downloads and checks it the first time) '
            "(default: env JAXREG_DATA)",
            metavar="PATH",
        ),
    )
    synthetic: bool = dataclasses.field(
        default=False, metadata=_option("use small offline synthetic IMDB-like data (a demo) instead of --data")
    )
    devices: int | None = dataclasses.field(
        default=None,
        metadata=_option(
            "run on N devices (on CPU N host devices are created; default: all, but at most what --placement can "
            "use; more is refused). On CPU without --devices: one host device per program, up to the usable cores",
            metavar="N",
        ),
    )
    placement: str = dataclasses.field(
        default="auto",
        metadata=_option(
            "spread: each program (bucket of variants) whole on one device, programs on different devices train at "
            "the same time (histories bit-identical to one device); shard: every program's variants sharded over "
            "all devices; auto: spread on CPU unless --devices is given, else shard",
            choices=PLACEMENTS,
        ),
    )
    axis: str | None = None
    divergence_threshold: float = dataclasses.field(
        default=DIVERGENCE_THRESHOLD,
        metadata=_option(
            "a variant has diverged from the first epoch where a loss exceeds X, or a metric is NaN or infinite "
            "(Keras' clipped data loss is at most ~16.1 per review)",
            metavar="X",
        ),
    )
    patience: int | None = dataclasses.field(  # early stopping (variants.RunSettings.patience); None: all epochs
        default=None,
        metadata=_option(
            "early stopping: end the run once every variant has gone N epochs without a new best validation loss; "
            "each variant's best-epoch parameters are kept (params/, 'best'), as Keras' EarlyStopping with "
            "restore_best_weights (default: train all --epochs)",
            metavar="N",
        ),
    )

    def __post_init__(self):
        def bad(field, why):
            raise SweepError(f"config {self.name!r}: {field}={getattr(self, field)!r} {why}")

        def positive_int(field):
            value = getattr(self, field)
            if not is_int(value) or value < 1:
                bad(field, "must be an integer >= 1")
            object.__setattr__(self, field, int(value))  # NumPy ints too, as plain JSON-ready ints

        problem = name_problem(self.name)
        if problem is not None:
            raise SweepError(f"config name {self.name!r} {problem}")
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants or not all(isinstance(v, V.VariantSpec) for v in self.variants):
            bad("variants", "must be a non-empty sequence of VariantSpec")
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            bad("variants", f"has duplicate names {duplicates}")
        clashes = clashing_names(names)
        if clashes:
            bad("variants", f"has names that differ only in case {clashes}, one file name on some file systems")
        if any(v.seed != 0 for v in self.variants):
            bad("variants", "must have seed 0 (set seeds instead)")
        for field in ("epochs", "seeds", "batch_size", "holdout_size") + (
            ("devices",) if self.devices is not None else ()
        ):
            positive_int(field)
            if getattr(self, field) > MAXIMA[field]:
                bad(field, f"is above the maximum {MAXIMA[field]:,}")
        if self.patience is not None:
            positive_int("patience")
        if self.loss not in losses.LOSS_MODES:
            bad("loss", f"must be one of {losses.LOSS_MODES}")
        if self.product not in PRODUCTS:
            bad("product", f"must be one of {PRODUCTS}")
        if self.variant_loop not in V.VARIANT_LOOPS:
            bad("variant_loop", f"must be one of {V.VARIANT_LOOPS}")
        if self.placement not in PLACEMENTS:
            bad("placement", f"must be one of {PLACEMENTS}")
        if self.validation not in VALIDATIONS:
            bad("validation", f"must be one of {VALIDATIONS}")
        if self.axis is not None and self.axis not in AXES:
            bad("axis", f"must be None or one of {AXES}")
        if self.axis == "train_size" and any(v.train_size is None for v in self.variants):
            bad("axis", "needs every variant's train_size set (a number of examples to plot against)")
        if not isinstance(self.synthetic, bool):
            bad("synthetic", "must be True or False")
        if self.synthetic and self.data is not None:
            bad("data", "cannot be combined with synthetic=True (choose one)")
        if self.synthetic and self.validation != "test":
            bad("validation", "must be 'test' with synthetic data (it has its own validation split)")
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            bad("data", "must be a path or None")
        threshold = self.divergence_threshold
        if not is_number(threshold) or not 0 < threshold < math.inf:
            bad("divergence_threshold", "must be a finite number > 0")
        object.__setattr__(self, "divergence_threshold", float(threshold))

    def replace(self, **changes) -> SweepConfig:
        """A copy with some fields changed (validated again); unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SweepError(f"config {self.name!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def select(self, names: Sequence[str]) -> SweepConfig:
        """Only the named variants, in the config's order."""
        known = [v.name for v in self.variants]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SweepError(
                f"unknown variant(s) {', '.join(unknown)} in preset {self.name!r}; known: {', '.join(known)}"
            )
        return self.replace(variants=tuple(v for v in self.variants if v.name in names))

    def variant_specs(self) -> list[V.VariantSpec]:
        return V.with_seeds(self.variants, range(self.seeds))

    def run_settings(self) -> V.RunSettings:
        return V.RunSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            loss=self.loss,
            product=self.product,
            variant_loop=self.variant_loop,
            patience=self.patience,
        )

    def axis_values(self) -> dict[str, float]:
        """{variant name: the value of `axis`}; empty without an axis."""
        if self.axis is None:
            return {}
        if self.axis == "width":
            return {v.name: float(v.widths[0]) for v in self.variants}
        return {v.name: float(getattr(v, self.axis)) for v in self.variants}

    def axis_series(self) -> dict[str, str]:
        """{variant name: its series} along `axis` (see `axis_series`); empty without an axis."""
        return {} if self.axis is None else axis_series(self.variants, self.axis)

    def to_dict(self) -> dict:
        """JSON-ready: every field, variants as dicts (an own model by its description, `VariantSpec.to_dict`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["variants"] = [v.to_dict() for v in self.variants]
        return json.loads(json.dumps(d))
