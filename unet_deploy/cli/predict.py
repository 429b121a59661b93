"""`unet-deploy predict` (transitional: the command still lives in unet_deploy.predict and moves here)."""
from ..predict import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
