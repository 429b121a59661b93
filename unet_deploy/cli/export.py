"""`unet-deploy export` (transitional: the command still lives in unet_deploy.export and moves here)."""
from ..export import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
