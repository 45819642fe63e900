"""The one exception type the engine raises for problems a user can fix.

The CLI prints its message and exits non-zero; anything else reaching the CLI is a bug and keeps its
traceback. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class LoracamError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    exit_code = 2
