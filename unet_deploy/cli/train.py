"""`unet-deploy train` (transitional: the command still lives in unet_deploy.train and moves here)."""
from ..train import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
