"""The one exception type for errors a user can cause (bad file, bad option, bad data), and name look-ups."""
from __future__ import annotations

import difflib
from typing import Iterable


class UnetDeployError(Exception):
    """A user error: the message names the file, the problem and the fix.

    A plain ``Exception``: the library knows no CLI. The commands in ``unet_deploy.cli`` turn
    it into one line on stderr and exit code 1, with no traceback.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = str(message)

    def __str__(self) -> str:
        return self.message


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'onnx'?)"`` for the closest of ``choices`` to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name).strip().lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def look_up(name: str, choices: Iterable[str], what: str) -> str:
    """``name`` if it is one of ``choices``; else one line naming the closest choice and all of them.

    As MONAI's ``look_up_option``: ``look_up("onx", ["onnx", "aoti"], "format")`` raises
    ``format 'onx' is unknown (did you mean 'onnx'?); choose from onnx, aoti``.

    Args:
        name: what the user wrote.
        choices: the valid names, in the order to list them.
        what: the kind of name, for the message ("format", "backend", "--precision").
    """
    choices = list(dict.fromkeys(choices))
    if name in choices:
        return name
    raise UnetDeployError(f"{what} {name!r} is unknown{did_you_mean(name, choices)}; choose from {', '.join(choices)}")
