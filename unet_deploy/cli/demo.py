"""`unet-deploy demo`: the whole pipeline on built-in synthetic data, ending in an HTML report (``unet_deploy.demo``)."""
from __future__ import annotations

from pathlib import Path

import click

from ._command import command as _command


@_command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Folder for every artefact and report.html.")
@click.option("--quick", is_flag=True, help="A tiny run (seconds), for smoke tests.")
def command(out: Path, quick: bool) -> None:
    """Run the whole pipeline on built-in synthetic data.

    \b
    Examples:
      unet-deploy demo                  # writes demo_out/report.html
      unet-deploy demo --out /tmp/demo --quick
    """
    from ..demo import run_demo

    run_demo(out, quick=quick, log=click.echo)
