"""``w3gate buffer check [--repair]``: check every file of the record buffer, and repair offline.

Without ``--repair`` nothing is changed: the store is opened read-only, every segment is read and
checked in full, and each problem is reported with what a repair would keep. ``--repair`` does
what the gateway does when it opens the store (damaged files kept aside as
``<name>.damaged-<time>``, records salvaged, seqs continued above every one issued), for every
segment; it refuses while ``w3gate run`` holds the store (the gateway repairs at start anyway).
With ``[buffer] encrypt_at_rest`` (or a data key left from it) every encrypted payload is opened
too; one that does not open is reported UNREADABLE and left as it is (a repair cannot help).
"""
from __future__ import annotations

import os
import time

import click

from gateway.buffer.store import FullPolicy, RecordStore, StoreConfig
from gateway.chain.datakey import cipher_from_config
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.errors import W3gateError
from gateway.status import read_status


@click.group()
def buffer() -> None:
    """Check (and repair) the record buffer's files."""


@buffer.command()
@click.option("--repair", is_flag=True, help="Keep damaged files aside (<name>.damaged-<time>) and "
              "recover what can be (the gateway must be stopped).")
@json_option
@config_option
@data_dir_option
def check(repair, as_json, config_path, data_dir) -> None:
    """Report every damaged or missing buffer file; exit 1 if any is found and not repaired."""
    config = get_config(config_path, data_dir)
    path = config.layout.records
    if not path.is_dir():
        raise click.ClickException(f"no record buffer at {path}")
    if repair:
        pid = _running_pid(config)
        if pid is not None:
            raise click.ClickException(f"w3gate run (pid {pid}) holds the buffer; stop it first "
                                       "(it repairs the buffer itself when it starts)")
    b = config.buffer
    try:
        store = RecordStore(path, StoreConfig(segment_records=b.segment_records, max_records=b.max_records,
                                              full_policy=FullPolicy(b.full_policy),
                                              retention_s=b.retention_s), readonly=not repair,
                            cipher=cipher_from_config(config))  # encrypted payloads must open too
    except OSError as e:
        raise click.ClickException(f"cannot open {path}: {e.strerror or e}") from None
    except W3gateError as e:
        if e.reason == "locked":
            raise click.ClickException(f"{path} is open for writing by another process (w3gate run?); "
                                       "stop it first") from None
        raise click.ClickException(str(e)) from None
    try:
        damage = store.check_all()
        stats = store.stats()
        unreadable = store.unreadable  # payloads that do not open: no repair brings them back
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        store.close()
    unopened = [id(d) for d in unreadable.values()]
    report = {"path": str(path), "ok": not damage, "repaired": repair and len(damage) > len(unreadable),
              "damage": [d.as_dict() for d in damage], "unreadable": list(unreadable),
              "records": stats["records"], "segments": stats["segments"], "last_seq": stats["last_seq"]}
    if as_json:
        emit_json(report)
    else:
        click.echo(f"buffer {path}: {stats['records']} records in {stats['segments']} segments, "
                   f"last seq {stats['last_seq']}")
        for d in damage:
            click.echo(f"{'UNREADABLE' if id(d) in unopened else 'repaired' if repair else 'DAMAGED'}  {d.line()}")
        if not damage:
            click.echo("ok: every file checked, no damage")
        if unreadable:
            click.echo(f"{len(unreadable)} encrypted payload(s) do not open: no repair brings them back; they open "
                       "only with the datakey.json (and node key) they were written with")
        if len(damage) > len(unreadable) and not repair:
            click.echo(f"{len(damage) - len(unreadable)} damaged file(s); `w3gate buffer check --repair` (gateway stopped) "
                       "keeps them aside and the store keeps what can be recovered")
    if damage and not repair or unreadable:
        raise click.exceptions.Exit(1)


def _running_pid(config) -> int | None:
    """The pid of a live ``w3gate run`` on this data directory, from its status.json."""
    info = read_status(config.layout.status) or {}
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    # a status older than a minute is a process that died without cleaning up and whose pid was reused
    return pid if time.time() - info.get("time", 0) < 60 else None


COMMANDS = [buffer]
