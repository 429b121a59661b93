"""`unet-deploy demo` (transitional: the command still lives in unet_deploy.demo and moves here)."""
from ..demo import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
