"""``w3gate`` command line: one small module per command group, as mpremote does.

Modules load when their command runs, so ``w3gate run`` does not carry web3 (``key``,
``proof``) or the demo's dependencies in its memory.

Errors end the same way everywhere (``ErrorHandlingGroup``): an expected failure (a typed
``W3gateError``, a file that cannot be read or written) prints ``Error: <reason>: <detail>`` and
exits 1; anything else is a bug in w3gate, which prints one line saying so and where the full
traceback was written, and exits 70 (EX_SOFTWARE). No input shows the user a traceback.
"""
from __future__ import annotations

import errno
import importlib
import os
import tempfile
import time
import traceback

import click

from gateway.errors import W3gateError
from hardware.errors import EmulatorError

EXIT_BUG = 70  # sysexits.h EX_SOFTWARE

# command -> the module (gateway/cli/<module>.py) whose COMMANDS list holds it
COMMAND_MODULES = {
    "run": "run", "demo": "demo", "config": "config", "device": "device", "pebble": "pebble",
    "records": "records", "status": "status", "sim": "sim", "project": "project", "applet": "project",
    "publisher": "project", "key": "key", "proof": "proof", "buffer": "buffer", "broker": "broker",
    "chain": "chain", "service": "service", "doctor": "doctor", "dashboard": "dashboard",
    "vc": "vc", "market": "market",
}


class BugError(click.ClickException):
    """An exception nobody expected: the message says where its traceback is."""

    exit_code = EXIT_BUG


def describe_os_error(e: OSError) -> str:
    """``<what went wrong>: <path>`` for a failed file or socket operation."""
    what = e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{what}: {' -> '.join(paths)}" if paths else what


def save_traceback(exc: BaseException) -> str | None:
    """Write the traceback of ``exc`` to a file for the bug report; its path, or None if even that fails."""
    directory = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    text = "".join(traceback.format_exception(exc))
    for where in (os.path.join(directory, "w3gate"), tempfile.gettempdir()):
        try:
            os.makedirs(where, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=time.strftime("crash-%Y%m%d-%H%M%S-"), suffix=".txt", dir=where)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def to_click_error(e: Exception) -> click.ClickException:
    """The one-line error the user sees for ``e``."""
    if isinstance(e, (W3gateError, EmulatorError)):  # the emulator's commands (sim, demo) say theirs too
        return click.ClickException(str(e))
    if isinstance(e, OSError):
        return click.ClickException(describe_os_error(e))
    path = save_traceback(e)
    where = f"the traceback is in {path}" if path else "the traceback could not be saved"
    return BugError(f"internal error (a bug in w3gate, please report it): {type(e).__name__}: {e}; {where}")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(name)
        if module is None:
            return None
        commands = importlib.import_module(f"gateway.cli.{module}").COMMANDS
        return next(c for c in commands if c.name == name)

    def invoke(self, ctx: click.Context):
        """Every command runs in here: expected errors become one line, bugs a pointer to a traceback."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except OSError as e:
            if e.errno == errno.EPIPE:  # `w3gate records | head`: click leaves quietly
                raise
            raise to_click_error(e) from None
        except Exception as e:  # noqa: BLE001 - the boundary: nothing reaches the user as a traceback
            raise to_click_error(e) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="w3gate")
def main() -> None:
    """w3gate: a W3bstream-compatible edge node for Raspberry-Pi-class gateways."""
