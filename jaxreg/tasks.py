"""What a model predicts and how it is scored: binary, multiclass or regression.

A `Task` fixes the model's number of outputs, the per-example loss that training
minimizes, and the one metric reported beside it (`metric`): accuracy for classification,
the mean absolute error (MAE) for regression. Histories, summaries, figures and TensorBoard
name their columns by `history.metric_names(task.metric)`. The task of a run comes from its data
(`Dataset.target`) and the loss mode (`task_for`).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxreg import losses

KINDS = ("binary", "multiclass", "regression")
REGRESSION_LOSS = "mse"
LOSSES = losses.LOSS_MODES + (REGRESSION_LOSS,)


@dataclasses.dataclass(frozen=True)
class Task:
    """kind: "binary" (one logit, 0/1 labels), "multiclass" (`num_classes` logits, integer labels)
    or "regression" (one output, float targets); loss: "keras" or "logits" for classification
    (see jaxreg.losses), "mse" for regression."""

    kind: str = "binary"
    loss: str = losses.DEFAULT_MODE
    num_classes: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task.kind must be one of {KINDS}, got {self.kind!r}")
        allowed = (REGRESSION_LOSS,) if self.kind == "regression" else losses.LOSS_MODES
        if self.loss not in allowed:
            raise ValueError(f"Task.loss must be one of {allowed} for a {self.kind} task, got {self.loss!r}")
        if self.kind == "multiclass":
            if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 2:
                raise ValueError(
                    f"Task.num_classes must be an integer >= 2 for a multiclass task, got {self.num_classes!r}"
                )
        elif self.num_classes is not None:
            raise ValueError(
                f"Task.num_classes is for multiclass tasks only; a {self.kind} task got {self.num_classes!r}"
            )

    @property
    def outputs(self) -> int:
        """The model's output units: one logit or value, or one logit per class."""
        return self.num_classes if self.kind == "multiclass" else 1

    @property
    def classes(self) -> int | None:
        """The number of label values: 2 for binary, num_classes for multiclass, None for regression."""
        return {"binary": 2, "multiclass": self.num_classes}.get(self.kind)

    @property
    def metric(self) -> str:
        """The metric reported beside the loss: "accuracy" (higher is better) or "mae" (lower is better)."""
        return "mae" if self.kind == "regression" else "accuracy"

    def _squeezed(self, outputs: jax.Array) -> jax.Array:
        """A model's [..., 1] output as [...] for one-output tasks (the study's MLP already gives [...])."""
        if self.kind != "multiclass" and outputs.ndim >= 1 and outputs.shape[-1] == 1:
            return outputs[..., 0]
        return outputs

    def loss_per_example(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        outputs = self._squeezed(outputs)
        if self.kind == "binary":
            return losses.binary_cross_entropy(outputs, y, self.loss)
        if self.kind == "multiclass":
            return losses.softmax_cross_entropy(outputs, y, self.loss)
        return losses.squared_error(outputs, y)

    def metric_per_example(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        outputs = self._squeezed(outputs)
        if self.kind == "binary":
            return losses.correct(outputs, y)
        if self.kind == "multiclass":
            return losses.correct_class(outputs, y)
        return losses.absolute_error(outputs, y)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def task_for(kind: str, loss: str = "auto", num_classes: int | None = None) -> Task:
    """The Task of data of this kind (`Dataset.target`) with this loss; "auto" is the kind's default
    ("keras" for classification, "mse" for regression)."""
    if loss == "auto":
        loss = REGRESSION_LOSS if kind == "regression" else losses.DEFAULT_MODE
    return Task(kind, loss, num_classes if kind == "multiclass" else None)


def higher_is_better(metric_name: str) -> bool:
    """Whether larger values of a metric column are better (accuracies) or worse (losses, errors)."""
    return metric_name.endswith("accuracy")
