"""``w3gate run``: the gateway process."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from gateway.cli.common import config_option, data_dir_option, get_config
from gateway.errors import W3gateError


@click.command()
@config_option
@data_dir_option
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), hidden=True,
              help="Bench hook: append 'digest received durable' per record to this file.")
def run(config_path: str | None, data_dir: str | None, trace_path: str | None) -> None:
    """Run the gateway: verify Pebble data from MQTT and buffer it durably.

    SIGTERM or Ctrl-C stops it cleanly: records in flight are written, acknowledged and the
    broker keeps everything not yet acknowledged for the next start.
    """
    from gateway.node import Node

    config = get_config(config_path, data_dir)
    logging.basicConfig(level=config.log.level.upper(), handlers=[logging.StreamHandler(_CurrentStderr())],
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        node = Node(config, trace_path=trace_path)
    except W3gateError as e:  # a key that does not unlock, a registry not set ...
        raise click.ClickException(str(e)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop)

    asyncio.run(main())


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at each write: while a catch-up's progress bars show
    (gateway/catchup.py), rich stands in for it and prints log lines above the bars."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


COMMANDS = [run]
