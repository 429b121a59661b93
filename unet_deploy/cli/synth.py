"""`unet-deploy synth` (transitional: the command still lives in unet_deploy.data.synthetic and moves here)."""
from ..data.synthetic import command
from ._command import Command

command.__class__ = Command  # one-line errors until the command itself moves here
__all__ = ["command"]
