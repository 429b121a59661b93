"""The command line: the `unet-deploy` group and the stand-alone commands; the only package that knows click.

One module per command (``cli/<name>.py`` defines ``command``); they load lazily so `--help`
never imports torch.
"""
from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command. A command is one row here.
COMMANDS: dict[str, str] = {
    "labelme": "unet_deploy.cli.labelme:command",
    "crop": "unet_deploy.cli.crop:command",
    "synth": "unet_deploy.cli.synth:command",
    "train": "unet_deploy.cli.train:command",
    "export": "unet_deploy.cli.export:command",
    "predict": "unet_deploy.cli.predict:command",
    "eval": "unet_deploy.cli.eval:command",
    "bench": "unet_deploy.cli.bench:command",
    "demo": "unet_deploy.cli.demo:command",
    "serve": "unet_deploy.cli.serve:command",
    "select": "unet_deploy.cli.select:command",
}


def load_command(name: str) -> click.Command:
    """Import and return the click command registered as ``name``."""
    module, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return load_command(name) if name in COMMANDS else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unet-deploy")
def main() -> None:
    """From labelme annotations to a UNet running fast in Python or C++.

    \b
    Examples:
      unet-deploy demo --out demo_out           # the whole pipeline on built-in data
      unet-deploy synth data/raw --count 200    # synthetic images + labelme JSON
      unet-deploy labelme data/raw data/voc     # labelme folder -> VOC-style dataset
      unet-deploy train data/voc --out runs/a   # same as unet-train
    """


def _standalone(name: str):
    def run() -> None:
        load_command(name)(prog_name=f"unet-{name}")

    run.__name__ = f"{name}_main"
    return run


train_main = _standalone("train")
export_main = _standalone("export")
predict_main = _standalone("predict")
bench_main = _standalone("bench")
