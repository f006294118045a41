"""``w3gate project deploy|list|remove|state|txs``, ``w3gate applet logs``, ``w3gate publisher add|list|remove``.

A running gateway picks up deployments within a second; nothing needs a restart.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from gateway.applets.project import ProjectError, ProjectStore
from gateway.applets.publishers import Publishers
from gateway.cli.broker import sync_broker
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option


def _store(config_path, data_dir) -> ProjectStore:
    return ProjectStore(get_config(config_path, data_dir).layout)


@click.group()
def project() -> None:
    """Deploy, list and remove projects (applets + strategies + env + database)."""


@project.command()
@click.argument("project_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@config_option
@data_dir_option
def deploy(project_file, as_json, config_path, data_dir) -> None:
    """Check and install the project PROJECT_FILE declares (TOML); replaces one of the same name."""
    try:
        p = _store(config_path, data_dir).deploy(project_file)
    except ProjectError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        return emit_json(p.to_json())
    click.echo(f"deployed {p.name}: " + ", ".join(f"{a} ({sha[:12]})" for a, sha in p.applets.items()))
    for s in p.strategies:
        click.echo(f"  {s.event:<20} -> {s.applet}.{s.handler}")
    if p.pebble:
        click.echo("  verified Pebble messages reach it as PEBBLE_DATA, PEBBLE_CONFIG, PEBBLE_CONFIRM events")


@project.command("list")
@json_option
@config_option
@data_dir_option
def list_(as_json, config_path, data_dir) -> None:
    """The deployed projects."""
    projects = _store(config_path, data_dir).all()
    if as_json:
        return emit_json([p.to_json() for p in projects])
    if not projects:
        click.echo("no projects deployed (w3gate project deploy FILE)")
    for p in projects:
        routes = ", ".join(f"{s.event}->{s.applet}.{s.handler}" for s in p.strategies)
        click.echo(f"{p.name:<24} applets {', '.join(p.applets)}  {routes}{'  [pebble]' if p.pebble else ''}")


@project.command()
@click.argument("name")
@click.option("--keep-state", is_flag=True, help="Keep its KV and SQL data for a later deploy.")
@config_option
@data_dir_option
def remove(name, keep_state, config_path, data_dir) -> None:
    """Remove project NAME (and its state, unless --keep-state)."""
    if not _store(config_path, data_dir).remove(name, keep_state=keep_state):
        raise click.ClickException(f"no project named {name!r}")
    click.echo(f"removed {name}")


@project.command()
@click.argument("name")
@click.option("--kv", "kv_prefix", is_flag=False, flag_value="", default=None, metavar="[PREFIX]",
              help="KV entries (those whose key starts with PREFIX).")
@click.option("--sql", "statement", metavar="STATEMENT", help="Run a read-only SQL query on its database.")
@json_option
@config_option
@data_dir_option
def state(name, kv_prefix, statement, as_json, config_path, data_dir) -> None:
    """Project NAME's state as its applets left it: a summary, its KV entries, or a SQL query's rows."""
    from gateway.applets.abi import HostError
    from gateway.applets.state import StateView

    store = _store(config_path, data_dir)
    if store.load(name) is None:
        raise click.ClickException(f"no project named {name!r} (w3gate project list)")
    try:
        view = StateView(store.files(name).state)
    except FileNotFoundError:
        raise click.ClickException(f"project {name!r} has no state yet: no event has run") from None
    try:
        if statement is not None:
            try:
                rows = view.query(statement)
            except HostError as e:
                raise click.ClickException(f"the query fails (the state is opened read-only): {e}") from None
            if as_json:
                return emit_json(rows)
            for row in rows:
                click.echo(json.dumps(row))
            click.echo(f"({len(rows)} rows)", err=True)
        elif kv_prefix is not None:
            entries = view.kv(kv_prefix)
            if as_json:
                return emit_json([{"key": k, **_kv_value(v)} for k, v in entries])
            for key, value in entries:
                shown = _kv_value(value)
                click.echo(f"{key}  {shown.get('text', shown.get('base64'))}")
        else:
            summary = {"kv_entries": len(view.kv()), "tables": view.tables()}
            if as_json:
                return emit_json(summary)
            click.echo(f"{summary['kv_entries']} KV entries (--kv [PREFIX] lists them)")
            for table, rows in summary["tables"].items():
                click.echo(f"table {table}: {rows} rows (--sql 'SELECT * FROM {table}')")
    finally:
        view.close()


@project.command()
@click.argument("name")
@json_option
@config_option
@data_dir_option
def txs(name, as_json, config_path, data_dir) -> None:
    """Project NAME's transactions: the hash each applet was given, and what became of it
    (held until its event committed, then sent or voided; confirmed, reverted or dropped)."""
    from gateway.chain import txlog

    store = _store(config_path, data_dir)
    if store.load(name) is None:
        raise click.ClickException(f"no project named {name!r} (w3gate project list)")
    rows = txlog.read(store.files(name).txs)
    if as_json:
        return emit_json(rows)
    if not rows:
        click.echo(f"project {name!r} has sent no transaction")
    for row in rows:
        asked = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["asked"])) if row.get("asked") else "?"
        where = f"  block {row['block']}" if row.get("block") is not None else ""
        mined = f"  mined as {row['mined_hash']}" if row.get("mined_hash") not in (None, row["hash"]) else ""
        click.echo(f"{asked}  {row['hash']}  {row.get('status', '?'):<9}  to {row.get('to') or '?'}  "
                   f"event {row.get('event', '?')}{where}{mined}")


def _kv_value(value: bytes) -> dict:
    try:
        return {"text": value.decode("utf-8")}
    except UnicodeDecodeError:
        import base64
        return {"base64": base64.b64encode(value).decode()}


@click.group()
def applet() -> None:
    """What applets do."""


@applet.command()
@click.argument("project_name")
@click.option("--limit", type=int, default=50, show_default=True, help="Last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--level", type=click.Choice(["trace", "debug", "info", "warn", "error"]), help="Only this level.")
@json_option
@config_option
@data_dir_option
def logs(project_name, limit, follow, level, as_json, config_path, data_dir) -> None:
    """What the applets of PROJECT_NAME logged, and their failures."""
    path = _store(config_path, data_dir).files(project_name).applet_log
    if not path.parent.exists():
        raise click.ClickException(f"no project named {project_name!r}")

    def entries(lines: list[str]) -> list[dict]:
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if not level or entry.get("level") == level:
                out.append(entry)
        return out

    def show(lines: list[str]) -> None:
        for entry in entries(lines):
            if as_json:
                click.echo(json.dumps(entry))  # one object per line while following
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
                click.echo(f"{stamp} {entry['level']:<5} {entry['applet']}: {entry['msg']}")

    lines = path.read_text().splitlines() if path.exists() else []
    selected = entries(lines)
    selected = selected[-limit:] if limit else selected
    if as_json and not follow:
        return emit_json(selected)
    show([json.dumps(e) for e in selected])
    if follow:
        offset = path.stat().st_size if path.exists() else 0
        while True:
            time.sleep(0.5)
            if path.exists() and path.stat().st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                show(chunk.decode("utf-8", "replace").splitlines())



@click.group()
def publisher() -> None:
    """Publisher tokens: who may send events to a project (HTTP and MQTT event API)."""


@publisher.command("add")
@click.argument("project_name")
@click.argument("key")
@click.option("--name", help="A display name (default: the key).")
@json_option
@config_option
@data_dir_option
def publisher_add(project_name, key, name, as_json, config_path, data_dir) -> None:
    """Create a token for publisher KEY (e.g. a device serial) of PROJECT_NAME; shown only now."""
    try:
        token = Publishers(_store(config_path, data_dir)).add(project_name, key, name)
        sync_broker(get_config(config_path, data_dir))
    except ProjectError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        return emit_json({"project": project_name, "key": key, "token": token})
    click.echo(token)
    click.echo(f"(keep it: only its hash is stored. Send events with\n"
               f"  curl -H 'Authorization: Bearer {token}' --data-binary @payload "
               f"http://127.0.0.1:8889/srv-applet-mgr/v0/event/{project_name}?eventType=DEFAULT)", err=True)


@publisher.command("list")
@click.argument("project_name")
@json_option
@config_option
@data_dir_option
def publisher_list(project_name, as_json, config_path, data_dir) -> None:
    """The publishers of PROJECT_NAME (never their tokens)."""
    store = _store(config_path, data_dir)
    if store.load(project_name) is None:
        raise click.ClickException(f"no project named {project_name!r} (w3gate project list)")
    entries = Publishers(store).list(project_name)
    if as_json:
        return emit_json(entries)
    for p in entries:
        click.echo(f"{p['key']:<24} {p['name']}")


@publisher.command("remove")
@click.argument("project_name")
@click.argument("key")
@config_option
@data_dir_option
def publisher_remove(project_name, key, config_path, data_dir) -> None:
    """Revoke publisher KEY's token."""
    if not Publishers(_store(config_path, data_dir)).remove(project_name, key):
        raise click.ClickException(f"{project_name} has no publisher {key!r}")
    sync_broker(get_config(config_path, data_dir))
    click.echo(f"revoked {key}")


COMMANDS = [project, applet, publisher]
