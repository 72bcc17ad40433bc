"""Your own model in the variant engine: a Flax Linen module, or an init and an apply function.

The engine calls a model as `init(key, x) -> params` (x: a dense float32 [1, features]
zero array) and `apply(params, x, dropout_rate, dropout_key) -> outputs` (x: a batch, dense
[batch, features] or a `batches.SparseBatch`; dropout_key None when evaluating). A Linen
module is called by its `__call__` signature:

* `__call__(self, x, dropout_rate, dropout_key)`: jaxreg's style. Drop out with
  `jaxreg.dropout.dropout(h, dropout_rate, key)`: the rate is a traced number, so every
  variant's `dropout_rate` applies inside one compiled program (the study's MLP does this).
* `__call__(self, x, train)` (or `deterministic`) with `nn.Dropout` layers: Flax's style.
  The rate belongs to the module, so a variant's `dropout_rate` must be 0; the key arrives
  as `rngs={"dropout": key}`.
* `__call__(self, x)`: no dropout.

Outputs: [batch] or [batch, 1] for binary classification and regression, [batch, classes]
for multiclass. Penalties (`l1`, `l2`), decoupled weight decay and proximal L1 act on the
parameters that `penalize(path)` selects, path being the tuple of keys down to a leaf
(("params", "Dense_0", "kernel")); the default, `default_penalized`, takes every leaf named
"kernel" outside a submodule named "output": the study MLP's hidden kernels, as Keras'
kernel_regularizer on its hidden layers, and every Dense kernel of a model without an
"output" layer. A Network is hashable: equal modules share one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import jax

STYLES = ("jaxreg", "flax", "plain", "functions")


def default_penalized(path: tuple[str, ...]) -> bool:
    """True for leaves named "kernel" that are not inside a submodule named "output"."""
    return path[-1] == "kernel" and "output" not in path[:-1]


@functools.lru_cache(maxsize=None)
def _module_style(module_type: type) -> tuple[str, str | None]:
    """(style, name of the train/deterministic flag or None) from the module's __call__ parameters."""
    names = list(inspect.signature(module_type.__call__).parameters)[2:]  # after self and x
    if names[:2] == ["dropout_rate", "dropout_key"]:
        return "jaxreg", None
    for flag in ("train", "deterministic"):
        if flag in names:
            return "flax", flag
    return "plain", None


@dataclasses.dataclass(frozen=True)
class Network:
    """A model as the engine calls it: `module` (a Flax Linen module), or `init_fn` and `apply_fn`.

    init_fn(key, x) -> params; apply_fn(params, x, dropout_rate, dropout_key) -> outputs.
    penalize(path) -> bool selects the penalized leaves (see the module docstring).
    """

    module: Any = None
    init_fn: Callable | None = None
    apply_fn: Callable | None = None
    penalize: Callable[[tuple[str, ...]], bool] = default_penalized

    def __post_init__(self):
        has_module, has_functions = self.module is not None, (self.init_fn, self.apply_fn) != (None, None)
        if has_module == has_functions or (has_functions and None in (self.init_fn, self.apply_fn)):
            raise TypeError("Network needs either module= (a Flax Linen module) or both init_fn= and apply_fn=")
        if has_module and not (callable(getattr(self.module, "init", None)) and callable(getattr(self.module, "apply", None))):
            raise TypeError(f"Network.module must be a Flax Linen module, got {type(self.module).__name__}")
        if not callable(self.penalize):
            raise TypeError(f"Network.penalize must be a function of a parameter's path, got {self.penalize!r}")

    @property
    def style(self) -> str:
        return "functions" if self.module is None else _module_style(type(self.module))[0]

    @property
    def takes_dropout_rate(self) -> bool:
        """Whether a variant's (traced) dropout_rate reaches the model."""
        return self.style in ("jaxreg", "functions")

    @property
    def name(self) -> str:
        """The module's class and fields (BagMean(embedding=16)), or the apply function's name."""
        if self.module is None:
            return getattr(self.apply_fn, "__name__", "apply_fn")
        fields = [f.name for f in dataclasses.fields(self.module) if f.init and f.name not in ("parent", "name")]
        return f"{type(self.module).__name__}({', '.join(f'{k}={getattr(self.module, k)!r}' for k in fields)})"

    def init(self, key: jax.Array, x) -> dict:
        if self.module is None:
            return self.init_fn(key, x)
        style, flag = _module_style(type(self.module))
        if style == "jaxreg":
            return self.module.init({"params": key}, x, 0.0, None)
        if style == "flax":
            return self.module.init({"params": key, "dropout": key}, x, **{flag: flag == "deterministic"})
        return self.module.init({"params": key}, x)

    def apply(self, params, x, dropout_rate=0.0, dropout_key=None):
        if self.module is None:
            return self.apply_fn(params, x, dropout_rate, dropout_key)
        style, flag = _module_style(type(self.module))
        if style == "jaxreg":
            return self.module.apply(params, x, dropout_rate, dropout_key)
        if style == "flax":
            training = dropout_key is not None
            rngs = {"dropout": dropout_key} if training else None
            return self.module.apply(params, x, **{flag: training if flag == "train" else not training}, rngs=rngs)
        return self.module.apply(params, x)


def as_network(model) -> Network:
    """A Network from a Network or a Flax Linen module."""
    return model if isinstance(model, Network) else Network(module=model)
