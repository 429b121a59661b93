"""The one exception type for errors a user can cause (bad file, bad option, bad data)."""
from __future__ import annotations


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
