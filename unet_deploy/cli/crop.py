"""`unet-deploy crop` (transitional: the command still lives in unet_deploy.data.crop and moves here)."""
from ..data.crop import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
