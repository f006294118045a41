"""``w3gate status``: counters and buffer state of the (running or last) gateway."""
from __future__ import annotations

import time

import click

from gateway.buffer.store import RecordStore
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.status import pid_alive, read_status




@click.command()
@json_option
@config_option
@data_dir_option
def status(as_json, config_path, data_dir) -> None:
    """Show accepted and rejected counts (by reason), buffer size and latency."""
    config = get_config(config_path, data_dir)
    if not config.data_dir.is_dir():
        raise click.ClickException(f"no gateway data in {config.data_dir} (`w3gate run` makes it; "
                                   f"is --data-dir or W3GATE_DATA_DIR right?)")
    layout = config.layout
    info = read_status(layout.status) or {}
    alive = pid_alive(info.get("pid"))
    age = time.time() - info.get("time", 0)
    running = alive and age < 10
    if alive and not running:  # the process is there but has not written its status for a while
        info["degraded"] = {**info.get("degraded", {}), "gateway": f"not responding: status is {age:.0f} s old"}
    if layout.records.exists() and not running:
        store = RecordStore(layout.records, readonly=True)
        info["buffer"] = {**info.get("buffer", {}), **store.stats()}
        store.close()
    info["running"] = running
    if as_json:
        return emit_json(info)
    buf = info.get("buffer", {})
    click.echo(f"gateway    {'running, pid %s' % info['pid'] if running else 'not running'}"
               + (f", broker {info['mqtt']['broker']} {'connected' if info['mqtt']['connected'] else 'DISCONNECTED'}"
                  if running else ""))
    for name, reason in sorted((info.get("degraded") or {}).items()):
        click.echo(f"degraded   {name}: {reason}")
    mqtt = info.get("mqtt") or {}
    if running and (mqtt.get("drops") or mqtt.get("sessions_lost")):  # a takeover of our session shows here
        click.echo(f"broker     {mqtt.get('drops', 0)} connections lost, {mqtt.get('sessions_lost', 0)} sessions "
                   "lost (see the log's warnings)")
    ingest = info.get("ingest") or {}
    if running and ingest:
        age = ingest.get("last_handled_age_s")
        click.echo(f"ingest     {'no message handled yet' if age is None else f'last message handled {age:.0f} s ago'}"
                   f", {ingest.get('waiting', 0)} waiting")
    for name, stage in sorted((info.get("catching_up") or {}).items() if running else ()):
        eta = stage.get("eta_s")
        click.echo(f"catching up {name}: {stage['left']:,} of {stage['total']:,} records left, {stage['per_s']:,.0f}/s"
                   + (f", waiting: {stage['waiting']}" if stage.get("waiting") else
                      f", about {eta} s" if eta is not None else ""))
    dashboard = info.get("dashboard") or {}
    if running and dashboard.get("url"):
        click.echo(f"dashboard  {dashboard['url']}/  (metrics at /metrics)")
    click.echo(f"devices    {info.get('devices', '?')}")
    click.echo(f"accepted   {info.get('accepted_total', 0)}  " +
               "  ".join(f"{k}={v}" for k, v in sorted(info.get("accepted", {}).items())))
    click.echo(f"rejected   {info.get('rejected_total', 0)}  " +
               "  ".join(f"{k}={v}" for k, v in sorted(info.get("rejected", {}).items())))
    click.echo(f"buffer     {buf.get('records', 0)} records in {buf.get('segments', 0)} segments, "
               f"{buf.get('bytes', 0) / 1e6:.1f} MB; refused {buf.get('refused_total', 0)}, "
               f"dropped {buf.get('dropped_total', 0)}, expired {buf.get('expired_total', 0)}")
    for d in buf.get("damage") or []:
        click.echo(f"damaged    {d['file']}: {d['reason']}; {d['recovered']} records recovered"
                   + (f", the file kept as {d['moved_to']}" if d.get("moved_to") else ""))
    chain = info.get("chain")
    if running and chain:
        for line in chain_lines(chain):
            click.echo(line)
    market = info.get("market")
    if running and market:
        live = market["purchases"]
        click.echo(f"market     {market['contract']}: {len(live)} purchase(s) being delivered or settled, "
                   f"{market['done']} done" + (f"; {market['trouble']}" if market["trouble"] else ""))
        for pid, p in sorted(live.items(), key=lambda item: int(item[0])):
            click.echo(f"  purchase {pid}: {p['device']} blocks {p['blocks'][0]}..{p['blocks'][1] - 1}, {p['status']}, "
                       f"{p['delivered']} delivered to {p['endpoint']}"
                       + ("" if p["connected"] or p["status"] != "open" else " (not connected)")
                       + (f"; {p['problem']}" if p.get("problem") else ""))
    for label, key in (("verified", "latency_receive_to_verified"), ("durable", "latency_receive_to_durable")):
        lat = info.get(key) or {}
        if lat:
            click.echo(f"latency    receive→{label:<8} p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def chain_lines(chain: dict) -> list[str]:
    """The anchoring status as ``w3gate status`` prints it (also used by ``w3gate chain status``)."""
    state = ("STOPPED: " + chain["stopped"] if chain.get("stopped") else
             "PAUSED: " + chain["paused"] if chain.get("paused") else
             "RPC DOWN" if chain.get("chain") == "down" else "anchoring")
    lines = [f"chain      {state}; {chain.get('network')} as {chain.get('gateway')}, registry {chain.get('registry')}"]
    balance = chain.get("balance_wei")
    if balance is not None:
        spend = chain.get("spend_wei_per_day")
        days = chain.get("days_left")
        lines.append(f"funds      {balance / 1e18:.6f} on the node key"
                     + (f"; spending {spend / 1e18:.6f} a day, about {days:g} days left" if spend and days is not None
                        else ""))
    lines.append(f"anchors    last {_age(chain.get('last_anchor_age_s'))}; {chain.get('anchored_batches', 0)} of "
                 f"{chain.get('batches', 0)} batches anchored, last batch {chain.get('last_batch_records') or 0} records")
    if chain.get("unanchored_records") is not None:
        age = chain.get("unanchored_age_s")
        lines.append(f"backlog    {chain['unanchored_records']} records not anchored yet"
                     + (f", the oldest received {_age(age)}" if age is not None else ""))
    return lines


COMMANDS = [status]
