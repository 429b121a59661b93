"""The base of every click command: a ``UnetDeployError`` becomes one line and exit code 1."""
from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import UnetDeployError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Command(click.Command):
    """A click command that prints ``Error: <one line>`` and exits 1 on ``UnetDeployError``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnetDeployError as e:
            line = " ".join(str(e).split())  # one line, whatever the message held
            raise click.ClickException(line) from None


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``@click.command`` with ``Command`` as its class and ``-h/--help``."""
    kwargs.setdefault("context_settings", {}).update(CONTEXT)
    return click.command(name, cls=Command, **kwargs)


def echo_err(message: str) -> None:
    """A progress or log line on stderr (the library's ``log=`` callback for commands)."""
    click.echo(message, err=True)


def tiling_choice(tile_scale: float | None, overlap: float | None, no_tile: bool) -> dict[str, float] | bool | None:
    """``Segmenter(tiling=)`` from ``--tile-scale``, ``--overlap`` and ``--no-tile`` (None: the model's own)."""
    if no_tile and tile_scale is not None:
        raise UnetDeployError("--no-tile and --tile-scale contradict each other; pass one of them")
    if overlap is not None and tile_scale is None:
        raise UnetDeployError("--overlap applies to tiles: pass --tile-scale S with it")
    if tile_scale is not None:
        return {"scale": tile_scale, "overlap": 0.25 if overlap is None else overlap}
    return False if no_tile else None
