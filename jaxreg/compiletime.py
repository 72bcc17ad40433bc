"""How long XLA compiled, from JAX's monitoring events, so that a run reports it apart from training.

JAX records `/jax/core/compile/backend_compile_duration` for every program it hands to XLA
(on a persistent-cache hit, the time to load it instead) and `/jax/compilation_cache/cache_hits`
for every program loaded from the persistent compilation cache (`jaxreg.cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileTime:
    """Programs compiled (or loaded from the persistent cache), their seconds, and how many were loaded."""

    programs: int = 0
    seconds: float = 0.0
    cache_hits: int = 0

    def describe(self) -> str:
        loaded = f" ({self.cache_hits} loaded from the compilation cache)" if self.cache_hits else ""
        return f"compiled {self.programs} XLA computation(s) in {self.seconds:.1f} s{loaded}"


@contextlib.contextmanager
def measure() -> Iterator[CompileTime]:
    """Collect the compilations of the `with` block (of every thread) into the CompileTime it yields."""
    total = CompileTime()

    def on_duration(event: str, seconds: float, **_) -> None:
        if event == COMPILE_EVENT:
            total.programs += 1
            total.seconds += seconds

    def on_event(event: str, **_) -> None:
        if event == CACHE_HIT_EVENT:
            total.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
