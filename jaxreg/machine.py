"""What a result was computed on: the CPU model and the instruction set XLA:CPU compiles for.

XLA:CPU's float32 results depend on the instruction set its code uses (vector widths, and
whether it fuses multiplies into adds), so a training history on an AVX-512 machine differs
from one on an AVX2 machine after the first few steps, by float32 round-off that training
then amplifies. Run folders and benchmarks record the instruction set, and `.ci/run` reruns
the numerics tests with XLA held to `second_instruction_set()`, so that a test that only
holds on one instruction set fails on every machine.
"""

from __future__ import annotations

import functools
import os
import re

# XLA's names for --xla_cpu_max_isa, lowest first, with the /proc/cpuinfo flags each needs.
INSTRUCTION_SETS = {"SSE4_2": ("sse4_2",), "AVX": ("avx",), "AVX2": ("avx2", "fma"), "AVX512": ("avx512f",)}


@functools.cache
def cpu_info() -> dict:
    """{"model": name, "family": int, "model_number": int, "flags": frozenset} from /proc/cpuinfo ({} elsewhere)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        return {}
    number = lambda key: int(fields[key]) if fields.get(key, "").isdigit() else None  # noqa: E731
    return {
        "model": fields.get("model name", ""),
        "family": number("cpu family"),
        "model_number": number("model"),
        "flags": frozenset(fields.get("flags", "").split()),
    }


def native_instruction_set(flags=None) -> str | None:
    """The highest of INSTRUCTION_SETS that the CPU has (None where its flags are unknown)."""
    flags = cpu_info().get("flags", frozenset()) if flags is None else flags
    found = [name for name, needs in INSTRUCTION_SETS.items() if all(f in flags for f in needs)]
    return found[-1] if found else None


def xla_max_instruction_set(xla_flags: str | None = None) -> str | None:
    """The limit set by --xla_cpu_max_isa in XLA_FLAGS, if any."""
    xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    match = re.findall(r"--xla_cpu_max_isa=(\S+)", xla_flags)
    return match[-1].upper() if match else None


def instruction_set() -> str | None:
    """The instruction set XLA:CPU compiles for in this process: the CPU's, or XLA_FLAGS' lower limit."""
    native, limit = native_instruction_set(), xla_max_instruction_set()
    order = list(INSTRUCTION_SETS)
    if limit in order and (native is None or order.index(limit) < order.index(native)):
        return limit
    return native


def second_instruction_set(native: str | None = None) -> str:
    """A lower instruction set than the CPU's for which XLA computes differently: AVX2 on an AVX-512
    CPU (narrower vectors), AVX on an AVX2 CPU (no fused multiply-adds), else SSE4_2."""
    native = native_instruction_set() if native is None else native
    return {"AVX512": "AVX2", "AVX2": "AVX"}.get(native or "", "SSE4_2")


def describe() -> str:
    """One line for run folders and benchmark reports, e.g. 'AMD EPYC (family 25, model 1), XLA:CPU with AVX2'."""
    info = cpu_info()
    model = info.get("model") or os.uname().machine
    if info.get("family") is not None:
        model += f" (family {info['family']}, model {info['model_number']})"
    used, native = instruction_set(), native_instruction_set()
    held = f" (held by XLA_FLAGS; the CPU has {native})" if used != native else ""
    return f"{model}, XLA:CPU with {used or 'unknown instruction set'}{held}"
