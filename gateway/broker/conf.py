"""The mosquitto configuration w3gate runs with.

Its guarantees rest on a few settings (``TUNING``): QoS 0 data held for the gateway's session
while it restarts, and a QoS 1 window as wide as a group commit. ``managed_conf`` is the secure
broker w3gate writes (``w3gate broker setup``, docs/broker.md): no anonymous clients; the gateway
on a loopback listener with a password; Pebbles on a TLS listener with client certificates from
the local CA; publishers and tools on a TLS listener with passwords; on every listener the client
id is the username, so no client can take another's session; and limits on packet size, queued
bytes and connections. The rig's private brokers (rig/broker.py) add their own listener to
``TUNING``.
"""
from __future__ import annotations

import getpass

from gateway.config import BrokerConfig
from gateway.layout import BrokerFiles

# ``queue_qos0_messages`` lets the broker hold the Pebble's QoS 0 data for the gateway's
# persistent session while it restarts. ``max_inflight_messages`` is how many QoS 1 messages the
# broker sends before their acknowledgements: the gateway acknowledges after each group commit,
# so mosquitto's default of 20 would cap a batch at 20 records, and throughput is at most this
# window over the time to durable (5000 / ~0.3 s under a full backlog).
TUNING = ("max_queued_messages 1000000\n"
          "max_inflight_messages 5000\n"
          "queue_qos0_messages true\n")


def _listener(port: int, bind: str) -> str:
    return f"\nlistener {port} {bind}\nallow_anonymous false\nuse_username_as_clientid true\n"


def managed_conf(files: BrokerFiles, settings: BrokerConfig, *, user: str | None = None) -> str:
    """The secure broker's mosquitto.conf. ``user``: the account mosquitto drops to when started
    as root (the one w3gate runs as, who owns these 0600 files)."""
    files = BrokerFiles(files.dir.resolve())  # mosquitto resolves relative paths from its own cwd
    tls = (f"cafile {files.ca_cert}\ncertfile {files.server_cert}\nkeyfile {files.server_key}\n"
           "tls_version tlsv1.2\n")
    limits = f"max_connections {settings.max_connections}\n"
    out = ["# written by w3gate (`w3gate broker setup`): edits are overwritten; change [broker] instead\n",
           "per_listener_settings true\n",
           f"user {user or getpass.getuser()}\n",
           f"pid_file {files.pid}\n",
           f"persistence {'true' if settings.persistence else 'false'}\n",
           f"persistence_location {files.dir}/\n",
           "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
           "connection_messages true\n",
           f"max_packet_size {settings.max_packet_bytes}\n",
           f"max_queued_bytes {settings.max_queued_bytes}\n",
           TUNING,
           "\n# the gateway (and tools on this host): a password, loopback only",
           _listener(settings.local_port, "127.0.0.1"),
           f"password_file {files.passwd}\nacl_file {files.acl}\n", limits]
    if settings.device_port:
        out += ["\n# Pebbles: TLS, a client certificate from the local CA; its common name is the username",
                _listener(settings.device_port, settings.device_listen), tls,
                "require_certificate true\nuse_identity_as_username true\n",
                f"acl_file {files.acl}\n", limits]
    if settings.client_port:
        out += ["\n# publishers and tools on the network: TLS, a password",
                _listener(settings.client_port, settings.device_listen), tls,
                f"password_file {files.passwd}\nacl_file {files.acl}\n", limits]
    return "".join(out)
