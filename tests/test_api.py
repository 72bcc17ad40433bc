"""The public API of `import jaxreg`: every documented name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jaxreg


def test_every_public_name_resolves_to_its_home_module():
    for name in jaxreg.__all__:
        value = getattr(jaxreg, name)
        home = jaxreg._EXPORTS[name]
        assert getattr(value, "__module__", f"jaxreg.{home}") in (f"jaxreg.{home}",), name
        assert name in jaxreg.__doc__, f"{name} is not documented in jaxreg's docstring"


@pytest.mark.process
def test_import_jaxreg_does_not_import_jax():
    """experiments/sweep.py imports jax only after parsing its flags (XLA_FLAGS, signals)."""
    code = "import sys, jaxreg, jaxreg.runs, jaxreg.summaries; assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_unknown_names_raise_attribute_error():
    try:
        jaxreg.not_a_name  # noqa: B018
    except AttributeError as e:
        assert "not_a_name" in str(e)
    else:
        raise AssertionError("no AttributeError")
