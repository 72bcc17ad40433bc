"""jaxreg's user-facing error, at the bottom of the package so that every layer may raise it."""

from __future__ import annotations


class SweepError(Exception):
    """A user-facing problem with a sweep's config, data, devices, output folder or saved files; one line."""
