"""jaxreg: overfitting, underfitting and regularization studies in JAX/Flax.

The public API (imported lazily, so that `import jaxreg` stays cheap and does not start JAX):

  data         from_arrays, load_imdb, synthetic_dataset, Dataset
  variants     VariantSpec, with_seeds, RunSettings, run (returns a RunResult), PaddingPolicy
  models       MLP (the study's), MultiHotDense (a sparse multi-hot first layer), Network (your own
               Flax module or init/apply functions), nnx_model (a Flax NNX module class and its
               arguments, built per seed); jaxreg.dropout.dropout: a traced-rate dropout
  tasks        Task: binary, multiclass or regression, and the loss
  train step   StepConfig, Hyperparameters, TrainState, init_state, train_step (the reference),
               fused_train_step, train_epoch, evaluate
  results      load_run (a run folder, in any state: runs), stack (history), summarize, summary_table,
               early_stopping_table (with a test split; summaries), load_params (params)
  predictions  predict (a run folder's model applied to new text: probabilities; predictions)

Modules, one idea each (their layers: docs/architecture.md):
  dataset    Dataset and Split (multi-hot or dense inputs; binary, multiclass or regression targets), from_arrays
  data       IMDB (archive, folder, tfds) and synthetic bag-of-words data
  batches    host-side epoch order and fixed-shape batches (sparse pairs or dense rows) for the device
  model      the study's Keras-initialized MLP and its sparse multi-hot first layer
  networks   own models: how the engine calls a Flax module or a pair of functions
  tasks      binary / multiclass / regression: outputs, loss and metric
  dropout    inverted dropout driven by an explicit key, rate may be traced
  penalties  Keras-exact L1/L2 weight penalties through a kernel mask chosen by a path rule
  optim      RMSprop (Keras 2.3 and Keras 3 eps placement), decoupled weight decay, proximal L1
  losses     cross-entropies (stable and Keras-clipped), squared and absolute errors, accuracy
  train      pure init / train_step / evaluate / train_epoch functions
  specs      VariantSpec: what one variant is (its model, numbers, seed, data view), validated
  runplan    the run plan, built once: buckets, devices, how each runs, parameters, cost, memory
  variants   vmapped + sharded multi-variant training over a run plan (specs and planning names too)
  config     SweepConfig, the study a sweep runs; sweep: the resumable sweep behind experiments/sweep.py
  selection  which epochs count (divergence) and which one is chosen: best epoch, overfitting onset, early stopping
  fileio     atomic file writes, JSON, the names of a run folder's files; errors: SweepError
  history    a history's columns, the stacked form, history.jsonl/.csv
  summaries  per-variant summaries, their tables and summary.md/.csv
  runfolder  a run folder's manifest, writer lock and checks (the checkpoint: jaxreg.checkpoint)
  runs       a run folder read back (load_run for notebooks)
  params     the trained parameters a run saves (final and best epoch), load_params
  vocabulary the words a run's model reads (vocabulary.json), new text encoded with them
  predictions  predict: probabilities for new text from a run folder (experiments/predict.py)
  plots      the study's figures with seed bands; events: TensorBoard event files
  cache      the cache folders and JAX's persistent compilation cache; compiletime: compile time apart
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; one home per name.
_EXPORTS = {
    "from_arrays": "dataset",
    "Dataset": "dataset",
    "load_imdb": "data",
    "synthetic_dataset": "data",
    "VariantSpec": "specs",
    "with_seeds": "specs",
    "RunSettings": "runplan",
    "RunResult": "variants",
    "PaddingPolicy": "runplan",
    "run": "variants",
    "MLP": "model",
    "MultiHotDense": "model",
    "Network": "networks",
    "nnx_model": "networks",
    "Task": "tasks",
    "StepConfig": "train",
    "Hyperparameters": "train",
    "TrainState": "train",
    "init_state": "train",
    "train_step": "train",
    "fused_train_step": "train",
    "train_epoch": "train",
    "evaluate": "train",
    "load_run": "runs",
    "summarize": "summaries",
    "stack": "history",
    "summary_table": "summaries",
    "early_stopping_table": "summaries",
    "load_params": "params",
    "predict": "predictions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxreg.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
