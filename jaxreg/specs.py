"""What a variant is: `VariantSpec` (one model to train, validated on construction), its limits and errors.

The bottom of the variant engine: `runplan` groups specs into buckets and plans how each runs,
`variants` trains them. Everything here is also importable from `jaxreg.variants`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jaxreg import optim, views
from jaxreg.checks import FLOAT32_MAX, float32_finite, is_int, is_number
from jaxreg.networks import Network, as_network
from jaxreg.train import HYPERPARAMETERS, Hyperparameters

DEFAULT_WIDTHS = (16, 16)


class VariantError(ValueError):
    """An invalid variant specification; the message names the variant, field and value."""


# Documented limits of the inputs. Numbers train in float32, so a value must be finite there
# (1e39 is not); seeds must fit jax.random.key's and NumPy's seeding (0 <= seed < 2**32); a
# width above MAX_WIDTH would need tens of GB for one layer; a history keeps every epoch.
MAX_SEED = 2**32 - 1
MAX_WIDTH = 2**16
MAX_EPOCHS = 10**6
MAX_BATCH_SIZE = int(np.iinfo(np.int32).max) - 1  # batch rows are int32 indices, with one dummy row
# Variant and config names become file and folder names (params/<variant>/, tensorboard/<variant>/,
# runs/<config>/), so they are kept to a set that is safe on every file system and in every shell:
# a letter or digit, then letters, digits and . _ + = - (so never "." or "..", never a hidden file
# or a flag, never a separator), at most MAX_NAME_LENGTH characters. Every preset's names pass.
MAX_NAME_LENGTH = 100
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
SAFE_NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters, the first a letter or digit, the others letters, digits or . _ + = - "
    "(names become file and folder names)"
)


def name_problem(name) -> str | None:
    """Why `name` cannot be a variant's or config's name (see SAFE_NAME), or None when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH or not SAFE_NAME.fullmatch(name):
        return f"must be {SAFE_NAME_RULE}"
    return None


def clashing_names(names: Iterable[str]) -> list[list[str]]:
    """Groups of different names that one file system may take for one file name (equal but for case,
    as on macOS and Windows); each group sorted."""
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), set()).add(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One model to train. Validated on construction.

    model: None for the study's MLP at `widths` (default (16, 16)), or your own model (a Flax
    Linen module or a `networks.Network`; `widths` then stays None: the model fixes its shapes).
    """

    name: str
    widths: tuple[int, ...] | None = None
    # the per-variant numbers: train.HYPERPARAMETERS, with Hyperparameters' defaults (tests/test_feedback.py)
    l1: float = 0.0
    l2: float = 0.0
    weight_decay: float = 0.0
    l1_proximal: float = 0.0
    dropout_rate: float = 0.0
    learning_rate: float = 1e-3
    # the optimizer (optim.OPTIMIZERS) and its numbers; a number the optimizer does not read stays at its default
    optimizer: str = "keras2"
    momentum: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7
    nesterov: bool = False
    # the learning-rate schedule (optim.SCHEDULES) and its numbers, in optimizer steps
    schedule: str = "constant"
    decay_rate: float = 1.0
    decay_steps: float = 0.0
    warmup_steps: float = 0.0
    alpha: float = 0.0
    boundaries: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    seed: int = 0
    model: Network | None = None
    # the variant's view of the training split (see jaxreg.views): its first train_size examples
    # in its seed's order (None: all), with a fraction label_noise of their labels randomized
    train_size: int | None = None
    label_noise: float = 0.0

    def __post_init__(self):
        def bad(field, why):
            raise VariantError(f"variant {self.name!r}: {field}={getattr(self, field)!r} {why}")

        problem = name_problem(self.name)
        if problem is not None:
            raise VariantError(f"variant name {self.name!r} {problem}")
        if self.model is not None:
            self._check_model(bad)
        else:
            self._check_widths(bad)
        for field in ("l1", "l2", "weight_decay", "l1_proximal"):
            value = getattr(self, field)
            if not is_number(value) or not float32_finite(value) or value < 0:
                bad(field, f"must be a number >= 0 that is finite in float32 (at most {FLOAT32_MAX:.4g})")
            object.__setattr__(self, field, float(value))
        if not is_number(self.dropout_rate) or not 0 <= self.dropout_rate < 1 or np.float32(self.dropout_rate) >= 1:
            bad("dropout_rate", "must be a number in [0, 1) (also after rounding to float32)")
        object.__setattr__(self, "dropout_rate", float(self.dropout_rate))
        if (
            not is_number(self.learning_rate)
            or not float32_finite(self.learning_rate)
            or not self.learning_rate > 0
            or not np.float32(self.learning_rate) > 0
        ):
            bad(
                "learning_rate",
                f"must be a number > 0 that is finite and nonzero in float32 (at most {FLOAT32_MAX:.4g})",
            )
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        self._check_optimizer(bad)
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be an integer from 0 to 2**32-1={MAX_SEED}")
        object.__setattr__(self, "seed", int(self.seed))
        try:
            view = views.View(self.train_size, self.label_noise)
        except ValueError as e:
            raise VariantError(f"variant {self.name!r}: {e}") from None
        object.__setattr__(self, "train_size", None if view.train_size is None else int(view.train_size))
        object.__setattr__(self, "label_noise", float(view.label_noise))
        if self.model is not None and self.dropout_rate > 0 and not self.model.takes_dropout_rate:
            bad(
                "dropout_rate",
                f"does not reach model {self.model.name} ({self.model.style} style: its dropout rate is its own); "
                "set dropout_rate=0, or take (x, dropout_rate, dropout_key) in __call__ (see jaxreg.networks)",
            )

    def _check_optimizer(self, bad):
        """The optimizer and schedule by name, their numbers in range, and no number set that they do not read."""
        if not isinstance(self.optimizer, str) or self.optimizer not in optim.OPTIMIZERS:
            bad("optimizer", f"must be one of {optim.OPTIMIZERS}")
        if not isinstance(self.schedule, str) or self.schedule not in optim.SCHEDULES:
            bad("schedule", f"must be one of {optim.SCHEDULES}")
        if not isinstance(self.nesterov, (bool, np.bool_)):
            bad("nesterov", "must be True or False")
        object.__setattr__(self, "nesterov", bool(self.nesterov))
        if self.nesterov and self.optimizer != "sgd":
            bad("nesterov", "is for optimizer 'sgd' (Nesterov momentum)")
        for field in ("boundaries", "scales"):
            value = getattr(self, field)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                bad(field, "must be a sequence of numbers")
            object.__setattr__(self, field, tuple(value))
        ranges = {  # field: (test, what it must be)
            "momentum": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
            "b1": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
            "b2": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
            "eps": (lambda x: x > 0 and np.float32(x) > 0, "a number > 0 (also in float32)"),
            "decay_rate": (lambda x: x > 0, "a number > 0"),
            "decay_steps": (lambda x: x >= 0, "a number of steps >= 0"),
            "warmup_steps": (lambda x: x >= 0, "a number of steps >= 0"),
            "alpha": (lambda x: 0 <= x <= 1, "a number in [0, 1] (the final rate as a fraction of learning_rate)"),
        }
        for field, (ok, what) in ranges.items():
            value = getattr(self, field)
            if not is_number(value) or not float32_finite(value) or not ok(value):
                bad(field, f"must be {what}, finite in float32")
            object.__setattr__(self, field, float(value))
        reads = set(optim.OPTIMIZER_NUMBERS[self.optimizer]) | set(optim.SCHEDULE_NUMBERS[self.schedule])
        for field in (*ranges, "boundaries", "scales"):
            if field not in reads and getattr(self, field) != Hyperparameters._field_defaults[field]:
                bad(
                    field,
                    f"is not read by optimizer {self.optimizer!r} with schedule {self.schedule!r} (leave it at its default)",
                )
        if self.schedule in ("exponential", "cosine") and not self.decay_steps > self.warmup_steps:
            bad("decay_steps", f"must be > warmup_steps ({self.warmup_steps:g}) and > 0 for schedule {self.schedule!r}")
        if self.schedule == "piecewise":
            self._check_piecewise(bad)

    def _check_piecewise(self, bad):
        b, scales = self.boundaries, self.scales
        if not b or not all(is_int(x) and 0 < x <= 2**31 - 1 for x in b) or list(b) != sorted(set(b)):
            bad("boundaries", "must be one or more increasing step counts from 1 to 2**31-1")
        if len(scales) != len(b) or not all(is_number(x) and float32_finite(x) and x >= 0 for x in scales):
            bad("scales", f"must be one number >= 0 per boundary ({len(b)}), finite in float32")
        object.__setattr__(self, "boundaries", tuple(int(x) for x in b))
        object.__setattr__(self, "scales", tuple(float(x) for x in scales))

    def _check_widths(self, bad):
        if self.widths is None:
            object.__setattr__(self, "widths", DEFAULT_WIDTHS)
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Iterable):
            bad("widths", "must be a sequence of integers")
        widths = tuple(self.widths)
        if not all(is_int(w) for w in widths):
            bad("widths", "must be a sequence of integers")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        if not self.widths or not all(1 <= w <= MAX_WIDTH for w in self.widths):
            bad("widths", f"must be one or more widths, each from 1 to {MAX_WIDTH:,}")

    def _check_model(self, bad):
        try:
            object.__setattr__(self, "model", as_network(self.model))
            hash(self.model)
        except TypeError as e:
            raise VariantError(
                f"variant {self.name!r}: model={_short_model(self.model)} is not a usable model ({e})"
            ) from None
        if self.widths is not None:
            bad("widths", "is for the study's MLP; a variant with its own model takes its shapes from the model")

    @classmethod
    def from_dict(cls, values: dict) -> VariantSpec:
        """Build from a mapping, rejecting unknown fields by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            given = {k: values[k] for k in unknown}
            raise VariantError(f"variant {values.get('name')!r}: unknown field(s) {given}; known: {sorted(known)}")
        return cls(**values)

    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters.create(**{name: getattr(self, name) for name in HYPERPARAMETERS})

    @property
    def view(self) -> views.View:
        """Which training examples and labels this variant sees."""
        return views.View(self.train_size, self.label_noise)

    def to_dict(self) -> dict:
        """JSON-ready fields; an own model is recorded by its description (`model_description`), not its object."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        widths = None if self.widths is None else list(self.widths)
        vectors = {"boundaries": list(self.boundaries), "scales": list(self.scales)}
        return {**values, "widths": widths, **vectors, "model": model_description(self.model)}


def _short_model(model) -> str:
    """A model in one line: a class by its name, else its repr when short and on one line (a Flax module's with
    fields runs over several), else its type."""
    if isinstance(model, type):
        return f"{model.__name__} (a class)"
    text = repr(model)
    return text if "\n" not in text and len(text) <= 80 else f"a {type(model).__name__}"


def model_description(model: Network | None) -> str | None:
    """How a run folder names an own model: its class and fields (`Network.name`, e.g.
    "BagMean(embedding=16)"); None for the study's MLP."""
    return None if model is None else model.name


def with_seeds(variants: Iterable[VariantSpec], seeds: Sequence[int]) -> list[VariantSpec]:
    """Every variant once per seed."""
    return [dataclasses.replace(v, seed=int(s)) for v in variants for s in seeds]


# --- how a variant's optimizer and schedule are named in summaries, figures and tables ----------------------------

OPTIMIZER_LABELS = {"keras2": "RMSprop(keras2)", "keras3": "RMSprop(keras3)"}  # others by their name; no spaces
NUMBER_LABELS = {"learning_rate": "lr", "weight_decay": "wd", "warmup_steps": "warmup"}  # others by their field
STEP_COUNTS = ("decay_steps", "warmup_steps", "boundaries")  # written as whole numbers where they are
DECOUPLED_OPTIMIZERS = ("adamw", "sgdw")  # whose name says decoupled decay: their `wd` is named even at 0


def compact_number(x: float) -> str:
    """A number in the fewest characters of "%g" and a short exponent form: 1e-3 (not 0.001), 0.999, 100, 3e-4."""
    plain = f"{x:g}"
    if x == 0 or not np.isfinite(x):
        return plain
    mantissa, exponent = f"{x:.5e}".split("e")
    short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return short if len(short) < len(plain) else plain


def _number_text(field: str, value) -> str:
    def one(x):
        return str(int(x)) if field in STEP_COUNTS and float(x).is_integer() else compact_number(float(x))

    text = ",".join(one(x) for x in value) if isinstance(value, (list, tuple)) else one(value)
    return f"{NUMBER_LABELS.get(field, field)}={text}"


# the parts a number at its default gives ("b1=0.9", "eps=1e-7", "alpha=0", ...): a legend may leave them out
DEFAULT_PARTS = frozenset(
    _number_text(f, VariantSpec.__dataclass_fields__[f].default)
    for f in ("momentum", "b1", "b2", "eps", "weight_decay", "decay_rate", "warmup_steps", "alpha")
)


def _setting(variant, field: str):
    """A field of a VariantSpec or of a recorded variant (config.json's dict; a field it lacks: the default)."""
    if isinstance(variant, VariantSpec):
        return getattr(variant, field)
    default = VariantSpec.__dataclass_fields__[field].default
    return variant.get(field, default)


def optimizer_parts(variant) -> tuple[str, ...]:
    """The optimizer's name and every number it reads (`optim.OPTIMIZER_NUMBERS`), learning rate first; its
    decoupled weight decay (a stage of the update) where it has one, e.g. ("adamw", "lr=1e-3", ..., "wd=0.1")."""
    name = _setting(variant, "optimizer")
    fields = ("learning_rate", *optim.OPTIMIZER_NUMBERS.get(name, ()))
    if name in DECOUPLED_OPTIMIZERS or _setting(variant, "weight_decay"):
        fields += ("weight_decay",)
    nesterov = ("nesterov",) if _setting(variant, "nesterov") else ()
    return (OPTIMIZER_LABELS.get(name, name), *(_number_text(f, _setting(variant, f)) for f in fields), *nesterov)


def schedule_parts(variant) -> tuple[str, ...]:
    """The learning-rate schedule's name and every number it reads (`optim.SCHEDULE_NUMBERS`), in steps."""
    name = _setting(variant, "schedule")
    return (name, *(_number_text(f, _setting(variant, f)) for f in optim.SCHEDULE_NUMBERS.get(name, ())))


def describe_training(variant) -> tuple[str, str]:
    """(optimizer, schedule) of a VariantSpec or recorded variant, compact, e.g. ("adam lr=1e-3 b1=0.9 b2=0.999
    eps=1e-7", "cosine warmup=2 decay_steps=100 alpha=0"): the one description that summaries, figures and
    tables show (`training_descriptions`); parts separated by single spaces, none with a space inside."""
    return " ".join(optimizer_parts(variant)), " ".join(schedule_parts(variant))


def training_descriptions(variants) -> dict[str, tuple[str, str]]:
    """{variant name: `describe_training`} of VariantSpecs or recorded variants (config.json's)."""
    return {_setting(v, "name"): describe_training(v) for v in variants}


def common_and_distinct(parts: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(the parts every entry has, in the first entry's order; {key: its other parts}) of {key: parts}: what a
    figure's subtitle says once and what its legend says per line."""
    lists = [tuple(p) for p in parts.values()]
    common = tuple(p for p in (lists[0] if lists else ()) if all(p in other for other in lists[1:]))
    return common, {key: tuple(p for p in value if p not in common) for key, value in parts.items()}


def shared_and_own_settings(
    training: Mapping[str, tuple[str, str]], groups: Mapping[str, Sequence[str]] | None = None, brief: bool = False
) -> tuple[str, dict[str, str]]:
    """(what every entry shares, e.g. "adam b1=0.9 b2=0.999 eps=1e-7; schedule constant", {entry: the parts
    only some have, e.g. "lr=1e-3"}) of {variant: `describe_training`}: a figure's subtitle and what its legend
    adds per line (optimizer, then schedule: "adam, cosine warmup=2 ..."). `groups` ({label: variant names},
    e.g. the series of an axis): entries are the groups, each described by what its variants share. ("", {})
    without `training`. `brief`: an entry's own parts without numbers at their defaults (DEFAULT_PARTS), for
    legends ("adam lr=1e-3", not "adam lr=1e-3 b1=0.9 b2=0.999 eps=1e-7"); the shared parts stay whole."""
    if not training:
        return "", {}
    groups = groups if groups is not None else {name: [name] for name in training}
    described = {label: [training.get(n, ("", "")) for n in names] for label, names in groups.items()}
    shared = {}
    for label, pairs in described.items():
        optimizer, _ = common_and_distinct({i: o.split() for i, (o, _) in enumerate(pairs)})
        schedule, _ = common_and_distinct({i: s.split() for i, (_, s) in enumerate(pairs)})
        shared[label] = (optimizer, schedule)
    optimizer, optimizer_own = common_and_distinct({k: o for k, (o, _) in shared.items()})
    schedule, schedule_own = common_and_distinct({k: s for k, (_, s) in shared.items()})
    note = "; ".join(
        text for text in (" ".join(optimizer), "schedule " + " ".join(schedule) if schedule else "") if text
    )

    def kept(parts):
        return " ".join(p for p in parts if not (brief and p in DEFAULT_PARTS))

    own = {k: (kept(optimizer_own[k]), kept(schedule_own[k])) for k in shared}
    return note, {k: ", ".join(text for text in texts if text) for k, texts in own.items()}
