"""``w3gate config``: the configuration in effect, or the commented defaults to start a file from."""
from __future__ import annotations

import dataclasses

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config
from gateway.config import DEFAULTS_TOML


@click.command()
@click.option("--defaults", is_flag=True, help="Print the built-in defaults as a commented TOML file.")
@config_option
@data_dir_option
def config(defaults: bool, config_path: str | None, data_dir: str | None) -> None:
    """Show the configuration in effect (defaults < file < W3GATE_* variables), as JSON.

    `w3gate config --defaults > w3gate.toml` starts a config file.
    """
    if defaults:
        return click.echo(DEFAULTS_TOML, nl=False)
    shown = dataclasses.asdict(get_config(config_path, data_dir))
    if shown["mqtt"]["password"]:
        shown["mqtt"]["password"] = "(set)"  # never print secrets
    emit_json(shown)


COMMANDS = [config]
