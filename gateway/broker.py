"""The mosquitto settings w3gate runs with: its guarantees rest on them (QoS 0 data held for its
session while it restarts, a QoS 1 window as wide as a group commit). The gateway starts no
broker; the rig's private brokers (rig/broker.py) and a deployment's mosquitto use these."""
from __future__ import annotations


def broker_config(port: int, *, bind: str = "127.0.0.1") -> str:
    """A mosquitto 2 config: explicit listener, anonymous allowed on it, logs to stderr.

    ``queue_qos0_messages`` lets the broker hold the Pebble's QoS 0 data for our persistent
    session while the gateway restarts. ``max_inflight_messages`` is how many QoS 1 messages the
    broker sends before their acknowledgements: the gateway acknowledges after each group commit,
    so mosquitto's default of 20 would cap a batch at 20 records, and throughput is at most this
    window over the time to durable (5000 / ~0.3 s under a full backlog).
    """
    return (f"listener {port} {bind}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 5000\n"
            "queue_qos0_messages true\n")
