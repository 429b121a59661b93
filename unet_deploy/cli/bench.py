"""`unet-deploy bench` (transitional: the command still lives in unet_deploy.bench and moves here)."""
from ..bench import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
