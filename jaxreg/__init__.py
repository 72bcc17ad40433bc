"""jaxreg: overfitting, underfitting and regularization studies in JAX/Flax.

Modules, one idea each:
  dataset    Dataset and Split (multi-hot or dense inputs; binary, multiclass or regression targets), from_arrays
  data       IMDB and synthetic bag-of-words data, sparse multi-hot encoding
  batches    host-side epoch order and fixed-shape batches (sparse pairs or dense rows) for the device
  model      Keras-initialized Flax MLP whose first layer eats sparse multi-hot input
  dropout    inverted dropout driven by an explicit key, rate may be traced
  penalties  Keras-exact L1/L2 weight penalties through a kernel mask
  optim      RMSprop (Keras 2.3 and Keras 3 eps placement), decoupled weight decay, proximal L1
  losses     binary cross-entropy (stable and Keras-clipped) and accuracy
  train      pure init / train_step / evaluate / train_epoch functions
  variants   variant specs, bucket planning, vmapped + sharded multi-variant training
  sweep      SweepConfig and the resumable, checkpointing sweep behind experiments/sweep.py
  results    histories, summaries, run folders (load_run for notebooks)
  runfolder  a run folder's manifest, writer lock and checksummed checkpoint
  params     the trained parameters a run saves (final and best epoch), load_params
  outfolders default run folders runs/<preset>/<time> and runs/<preset>/latest
  plots      the study's figures with seed bands
  cache      the cache folders (one root, XDG_CACHE_HOME) and JAX's persistent compilation cache
  compiletime  how long XLA compiled, apart from training
"""

__version__ = "0.1.0"
