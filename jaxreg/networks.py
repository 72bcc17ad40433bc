"""Your own model in the variant engine: a Flax Linen module, a Flax NNX module, or an init and an apply function.

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

Any other parameter of `__call__` needs a default; a module class (not an instance), or a
`__call__` jaxreg cannot call, is refused when the Network is made. Outputs: [batch] or
[batch, 1] for binary classification and regression, [batch, classes] for multiclass,
checked when a run is planned (`parameter_shapes`, tracing init). Penalties (`l1`, `l2`), decoupled weight
decay and proximal L1 act on the
parameters that `penalize(path)` selects, path being the tuple of keys down to a leaf
(("params", "Dense_0", "kernel")); the default, `default_penalized`, takes every leaf named
"kernel" outside a submodule named "output": the study MLP's hidden kernels, as Keras'
kernel_regularizer on its hidden layers, and every Dense kernel of a model without an
"output" layer. A Network is hashable: equal modules share one compiled program.

A Flax NNX module enters as `nnx_model(MyModule, *args, **kwargs)`: its class and its
constructor's arguments without `rngs`, since jaxreg builds it once per seed as
`MyModule(*args, **kwargs, rngs=nnx.Rngs(key))` (an instance's initial values cannot be redrawn).
Its nnx.Param state, as a plain dict under "params" ({"params": {"hidden": {"kernel", "bias"}}},
list indices as strings), is what the engine trains, stacks over variants and saves; the
penalty rule above finds nnx.Linear's "kernel" leaves. Its `__call__` styles are Linen's:
(x, dropout_rate, dropout_key) with `jaxreg.dropout.dropout` for per-variant rates; (x, train)
or (x, deterministic), or (x) with `nnx.Dropout(rate, rngs=rngs)` layers, whose rates are their
own: jaxreg calls `module.train()` with the dropout streams reseeded from the step's key, or
`module.eval()` when evaluating. State other than parameters and random streams (BatchNorm's
statistics) is refused when the Network is made.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.errors import SweepError

STYLES = ("jaxreg", "flax", "plain", "functions")


def default_penalized(path: tuple[str, ...]) -> bool:
    """True for leaves named "kernel" that are not inside a submodule named "output"."""
    return path[-1] == "kernel" and "output" not in path[:-1]


@functools.cache
def _module_style(module_type: type) -> tuple[str, str | None]:
    """(style, name of the train/deterministic flag or None) from the module's __call__ parameters."""
    names = list(inspect.signature(module_type.__call__).parameters)[2:]  # after self and x
    if names[:2] == ["dropout_rate", "dropout_key"]:
        return "jaxreg", None
    for flag in ("train", "deterministic"):
        if flag in names:
            return "flax", flag
    return "plain", None


CALLABLE_SIGNATURES = "__call__(self, x), __call__(self, x, train) or __call__(self, x, dropout_rate, dropout_key)"


def _call_problem(module_type: type) -> str | None:
    """Why jaxreg cannot call this module class's __call__ in any of its styles, or None when it can:
    every parameter jaxreg does not pass (after x, and after dropout_rate and dropout_key or the
    train/deterministic flag) must have a default."""
    try:
        signature = inspect.signature(module_type.__call__)
    except (TypeError, ValueError):
        return None  # nothing to read: the first trace will tell
    params = list(signature.parameters.values())[1:]  # after self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return f"{module_type.__name__}.__call__{signature} takes no input x; write {CALLABLE_SIGNATURES}"
    style, flag = _module_style(module_type)
    passed = {"jaxreg": 3, "flax": 1, "plain": 1}[style]
    unfilled = [p.name for p in positional[passed:] if p.default is p.empty and p.name != flag]
    unfilled += [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty and p.name != flag]
    if unfilled:
        return (
            f"{module_type.__name__}.__call__{signature} needs {', '.join(unfilled)}, which jaxreg does not pass "
            f"({style} style); write {CALLABLE_SIGNATURES}, or give them defaults"
        )
    return None


def _functions_problem(init_fn: Callable, apply_fn: Callable) -> str | None:
    """Why jaxreg cannot call init_fn(key, x) or apply_fn(params, x, dropout_rate, dropout_key), or None."""
    for fn, arguments, how in (
        (init_fn, 2, "init_fn(key, x)"),
        (apply_fn, 4, "apply_fn(params, x, dropout_rate, dropout_key)"),
    ):
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*range(arguments))
        except TypeError:
            return f"{getattr(fn, '__name__', 'the function')}{signature} cannot be called as {how}"
    return None


def _string_keys(tree):
    """A nested dict with every key a string (NNX names list entries 0, 1, ...; run folders want strings)."""
    return {str(k): _string_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


@dataclasses.dataclass(frozen=True)
class NNXModule:
    """A Flax NNX module class and its constructor's arguments (rngs left out) behind Linen's
    init/apply interface, so that Network calls it as it calls a Linen module. Hashable: equal
    classes and arguments share one compiled program."""

    module_type: type
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs, sorted by name

    def build(self, key: jax.Array):
        """The module with its initial state drawn from `key` (every random stream derives from it)."""
        from flax import nnx

        return self.module_type(*self.args, **dict(self.kwargs), rngs=nnx.Rngs(key))

    @functools.cached_property
    def state_types(self) -> frozenset[type]:
        """The variable types in the module's state (traced, not computed)."""
        from flax import nnx

        abstract = nnx.eval_shape(lambda: self.build(jax.random.key(0)))
        return frozenset(type(v) for _, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Variable))

    @property
    def has_random_streams(self) -> bool:
        """Whether the module keeps random streams (nnx.Dropout(rate, rngs=rngs) does)."""
        from flax import nnx

        return any(issubclass(t, nnx.RngKey) for t in self.state_types)

    @property
    def style(self) -> tuple[str, str | None]:
        """Linen's styles by __call__; a plain __call__ over random streams (nnx.Dropout) is flax style without a flag."""
        style, flag = _module_style(self.module_type)
        return ("flax", None) if style == "plain" and self.has_random_streams else (style, flag)

    def _with_params(self, params: dict, dropout_key):
        """The module holding `params` (built under the trace: its own initial values are dead code),
        its random streams reseeded from dropout_key and in train mode, or in eval mode without one."""
        from flax import nnx

        module = self.build(jax.random.key(0))
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, params["params"])
        nnx.update(module, state)
        if dropout_key is None:
            module.eval()
        else:
            if self.has_random_streams:
                nnx.reseed(
                    module, **{name: jax.random.fold_in(dropout_key, i) for i, name in enumerate(self._streams(module))}
                )
            module.train()
        return module

    @staticmethod
    def _streams(module) -> list[str]:
        from flax import nnx

        return sorted({v.tag for _, v in nnx.iter_graph(module) if isinstance(v, nnx.RngKey)})

    def init_with_output(self, rngs: dict, x, *args, **kwargs):
        from flax import nnx

        module = self.build(rngs["params"])
        params = {"params": _string_keys(nnx.to_pure_dict(nnx.state(module, nnx.Param)))}
        return self.apply(params, x, *args, **kwargs), params

    def init(self, rngs: dict, x, *args, **kwargs):
        return self.init_with_output(rngs, x, *args, **kwargs)[1]

    def apply(self, params: dict, x, *args, rngs: dict | None = None, **kwargs):
        return self._with_params(params, None if rngs is None else rngs["dropout"])(x, *args, **kwargs)


def nnx_model(module_type: type, *args, **kwargs) -> Network:
    """A Network of a Flax NNX module: its class and its constructor's arguments without `rngs`
    (jaxreg builds it as module_type(*args, **kwargs, rngs=nnx.Rngs(key)) for each seed)."""
    if "rngs" in kwargs:
        raise TypeError(
            f"nnx_model({module_type.__name__}, ...) takes no rngs: jaxreg draws them from each variant's seed"
        )
    module = NNXModule(module_type, tuple(args), tuple(sorted(kwargs.items())))
    try:
        hash(module)
    except TypeError as e:
        raise TypeError(
            f"nnx_model({module_type.__name__}, ...): its arguments must be hashable (a tuple, not a list): {e}"
        ) from None
    return Network(module=module)


@dataclasses.dataclass(frozen=True)
class Network:
    """A model as the engine calls it: `module` (a Flax Linen module, or an `NNXModule` from `nnx_model`),
    or `init_fn` and `apply_fn`.

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
        if has_module and _is_nnx(self.module):
            name = (self.module if isinstance(self.module, type) else type(self.module)).__name__
            raise TypeError(
                f"{name} is a Flax NNX module{' class' if isinstance(self.module, type) else ''}: pass "
                f"jaxreg.nnx_model({name}, ...its arguments without rngs), which draws each seed's initial values"
            )
        if has_module and isinstance(self.module, type):
            raise TypeError(
                f"Network.module is the class {self.module.__name__}, not a module: pass an instance, "
                f"{self.module.__name__}(...), with its fields"
            )
        if has_module and not (
            callable(getattr(self.module, "init", None)) and callable(getattr(self.module, "apply", None))
        ):
            raise TypeError(f"Network.module must be a Flax Linen module, got {type(self.module).__name__}")
        problem = _call_problem(self._module_type) if has_module else _functions_problem(self.init_fn, self.apply_fn)
        if problem is None and isinstance(self.module, NNXModule):
            problem = _nnx_state_problem(self.module)
        if problem is not None:
            raise TypeError(problem)
        if not callable(self.penalize):
            raise TypeError(f"Network.penalize must be a function of a parameter's path, got {self.penalize!r}")

    @property
    def _module_type(self) -> type:
        return self.module.module_type if isinstance(self.module, NNXModule) else type(self.module)

    def _style(self) -> tuple[str, str | None]:
        return self.module.style if isinstance(self.module, NNXModule) else _module_style(type(self.module))

    @property
    def style(self) -> str:
        return "functions" if self.module is None else self._style()[0]

    @property
    def takes_dropout_rate(self) -> bool:
        """Whether a variant's (traced) dropout_rate reaches the model."""
        return self.style in ("jaxreg", "functions")

    @property
    def name(self) -> str:
        """The module's class and fields (BagMean(embedding=16)), or the apply function's name."""
        if self.module is None:
            return getattr(self.apply_fn, "__name__", "apply_fn")
        if isinstance(self.module, NNXModule):
            arguments = [repr(a) for a in self.module.args] + [f"{k}={v!r}" for k, v in self.module.kwargs]
            return f"{self.module.module_type.__name__}({', '.join(arguments)})"
        fields = [f.name for f in dataclasses.fields(self.module) if f.init and f.name not in ("parent", "name")]
        return f"{type(self.module).__name__}({', '.join(f'{k}={getattr(self.module, k)!r}' for k in fields)})"

    def init(self, key: jax.Array, x) -> dict:
        if self.module is None:
            return self.init_fn(key, x)
        style, flag = self._style()
        if style == "jaxreg":
            return self.module.init({"params": key}, x, 0.0, None)
        if style == "flax":
            return self.module.init({"params": key, "dropout": key}, x, **_flag(flag, training=False))
        return self.module.init({"params": key}, x)

    def init_with_outputs(self, key: jax.Array, x) -> tuple[dict, Any]:
        """(params, the outputs for x in evaluation): what `init` computes (a module's __call__ runs once
        inside init anyway), with the outputs that the run's task will read."""
        if self.module is None:
            params = self.init_fn(key, x)
            return params, self.apply_fn(params, x, 0.0, None)
        style, flag = self._style()
        if style == "jaxreg":
            outputs, params = self.module.init_with_output({"params": key}, x, 0.0, None)
        elif style == "flax":
            outputs, params = self.module.init_with_output(
                {"params": key, "dropout": key}, x, **_flag(flag, training=False)
            )
        else:
            outputs, params = self.module.init_with_output({"params": key}, x)
        return params, outputs

    def apply(self, params, x, dropout_rate=0.0, dropout_key=None):
        if self.module is None:
            return self.apply_fn(params, x, dropout_rate, dropout_key)
        style, flag = self._style()
        if style == "jaxreg":
            return self.module.apply(params, x, dropout_rate, dropout_key)
        if style == "flax":
            training = dropout_key is not None
            rngs = {"dropout": dropout_key} if training else None
            return self.module.apply(params, x, **_flag(flag, training), rngs=rngs)
        return self.module.apply(params, x)


def _flag(flag: str | None, training: bool) -> dict:
    """The keyword argument that tells a flax-style module whether it trains: train=, deterministic= or none."""
    return {} if flag is None else {flag: training if flag == "train" else not training}


def _is_nnx(model) -> bool:
    """Whether model is a Flax NNX module or module class (without importing flax.nnx for other models)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and (
        isinstance(model, nnx.Module) or (isinstance(model, type) and issubclass(model, nnx.Module))
    )


def _nnx_state_problem(module: NNXModule) -> str | None:
    """Why jaxreg cannot build or train this NNX module, or None: its constructor must run, and its
    state must be parameters and random streams (a BatchNorm's statistics would not be updated)."""
    try:
        types = module.state_types
    except Exception as e:  # the user's constructor, whatever it raises: one line naming it
        return f"building {module.module_type.__name__}(..., rngs=nnx.Rngs(key)) failed: {_first_line(e)}"
    from flax import nnx

    other = sorted(t.__name__ for t in types if not issubclass(t, (nnx.Param, nnx.RngState)))
    if other:
        kinds = ", ".join(other)
        return (
            f"{module.module_type.__name__} holds NNX state of type {kinds}; "
            "jaxreg trains nnx.Param and reseeds random streams only"
        )
    return None


def output_problem(shape, outputs: int) -> str | None:
    """Why outputs of this shape, for a batch of one example, do not fit a task with `outputs` outputs
    per example (1: binary or regression, [batch] or [batch, 1]; C: C classes, [batch, C]), or None."""
    want = [(1,), (1, 1)] if outputs == 1 else [(1, outputs)]
    if shape is None:
        return "returns no array"
    if tuple(shape) in want:
        return None
    need = (
        "one output per example ([batch] or [batch, 1]): a binary or regression task"
        if outputs == 1
        else (f"{outputs} outputs per example ([batch, {outputs}]): a task of {outputs} classes")
    )
    return f"returns outputs of shape {tuple(shape)} for a batch of 1; the data needs {need}"


def parameter_shapes(network: Network, num_words: int, outputs: int):
    """The shapes (jax.ShapeDtypeStruct) of the network's parameters for `num_words` input columns, traced,
    not computed; SweepError in one line when its init fails or its outputs do not fit `outputs` per example."""
    x = jnp.zeros((1, num_words), jnp.float32)
    key = jax.random.key(0)
    try:
        if network.module is not None:  # __call__ runs inside init: its outputs come at no extra trace
            params, out = jax.eval_shape(lambda: network.init_with_outputs(key, x))
        else:
            params = jax.eval_shape(lambda: network.init(key, x))
    except Exception as e:  # the user's model, whatever it raises: one line naming it
        raise SweepError(
            f"model {network.name}: its init on a [1, {num_words}] float32 input failed: {_first_line(e)}"
        ) from e
    if network.module is None:
        try:
            out = jax.eval_shape(lambda: network.apply(params, x))
        except Exception:  # noqa: BLE001 - an apply_fn that takes only the run's sparse batches: the first step tells
            return params
    problem = output_problem(getattr(out, "shape", None), outputs)
    if problem is not None:
        raise SweepError(f"model {network.name} {problem}")
    return params


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def as_network(model) -> Network:
    """A Network from a Network or a Flax Linen module (an NNX module: see `nnx_model`)."""
    return model if isinstance(model, Network) else Network(module=model)
