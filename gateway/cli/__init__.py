"""``w3gate`` command line: one small module per command group, as mpremote does."""
from __future__ import annotations

import click

from gateway.cli import config, demo, device, key, pebble, project, proof, records, run, sim, status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="w3gate")
def main() -> None:
    """w3gate: a W3bstream-compatible edge node for Raspberry-Pi-class gateways."""


for module in (run, demo, config, device, pebble, records, status, sim, project, key, proof):
    for command in module.COMMANDS:
        main.add_command(command)
