"""``python -m unet_deploy.train`` (and ``torchrun ... -m unet_deploy.train``): the `unet-train` command."""
from ..cli.train import command

command(prog_name="unet-train")
