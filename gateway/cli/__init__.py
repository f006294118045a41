"""``w3gate`` command line: one small module per command group, as mpremote does.

Modules load when their command runs, so ``w3gate run`` does not carry web3 (``key``,
``proof``) or the demo's dependencies in its memory.
"""
from __future__ import annotations

import importlib

import click

# command -> the module (gateway/cli/<module>.py) whose COMMANDS list holds it
COMMAND_MODULES = {
    "run": "run", "demo": "demo", "config": "config", "device": "device", "pebble": "pebble",
    "records": "records", "status": "status", "sim": "sim", "project": "project", "applet": "project",
    "publisher": "project", "key": "key", "proof": "proof", "buffer": "buffer",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(name)
        if module is None:
            return None
        commands = importlib.import_module(f"gateway.cli.{module}").COMMANDS
        return next(c for c in commands if c.name == name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="w3gate")
def main() -> None:
    """w3gate: a W3bstream-compatible edge node for Raspberry-Pi-class gateways."""
