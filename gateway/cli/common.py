"""Options and output helpers shared by the command modules."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

import click

from gateway.config import Config, load_config
from gateway.errors import W3gateError

config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             envvar="W3GATE_CONFIG", help="TOML config file (defaults are built in).")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False),
                               help="Data directory (overrides config and W3GATE_DATA_DIR).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def get_config(config_path: str | None, data_dir: str | None) -> Config:
    try:
        return load_config(config_path, data_dir=data_dir)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def iso(ts: float) -> str:
    """A Unix time as UTC ISO 8601 with milliseconds, the way every command prints times."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
