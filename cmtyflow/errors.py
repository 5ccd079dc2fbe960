"""Exceptions that cross module boundaries.

``UserError`` is something the person running cmtyflow can fix (a missing file, a bad
argument); the command line prints its message and exits 1. Anything else that escapes
is a bug in cmtyflow (exit 3, with a log file).
"""

from __future__ import annotations


class CmtyflowError(Exception):
    """Base of cmtyflow's own exceptions."""


class UserError(CmtyflowError):
    """A problem with the user's input, reported as ``error: <message>``."""
