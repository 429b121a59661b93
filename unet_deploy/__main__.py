"""`python -m unet_deploy` is the `unet-deploy` command group."""
from .cli import main

main()
