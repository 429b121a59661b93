"""The one exception type for errors a user can cause (bad file, bad option, bad data)."""
from __future__ import annotations

import click


class UnetDeployError(click.ClickException):
    """A user error: the message names the file, the problem and the fix.

    It is a ``click.ClickException`` so every command turns it into one line on
    stderr and exit code 1, with no traceback; Python callers catch it as usual.
    """

    exit_code = 1
