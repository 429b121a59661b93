"""`unet-deploy labelme` (transitional: the command still lives in unet_deploy.data.labelme and moves here)."""
from ..data.labelme import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
