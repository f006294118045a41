"""Who may do what on the broker: the password file and the access rules, written from the
identities w3gate knows, and mosquitto told to reload them.

Identities (docs/broker.md, "Who may do what"):

- **the gateway** (``w3gate``, a password, loopback only): reads what devices publish and W3bstream
  events, writes every downlink and ack. It alone may use client id ``w3gate`` (every listener
  takes the client id from the username), so nobody can take its session.
- **a Pebble** (username = the common name of its client certificate: its IMEI, or ``nrf-<IMEI>``
  for G1): publishes only ``device/<its id>/data|confirm|query``, reads only ``backend/<IMEI>/#``.
- **a publisher** (``<project>.<key>``, its token as its password): publishes only to
  ``<project>/push/#`` and reads only ``ack/<key>``. Nobody but the gateway reads push topics, so
  no client ever sees another's token in a topic name.

Everything else is denied: mosquitto's ACL file denies what no line allows. A sync rewrites both
files when they change and sends mosquitto SIGHUP: a removed identity's rules are gone at once for
its open connection too, and a removed password disconnects it.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field

from gateway.errors import W3gateError
from gateway.layout import BrokerFiles
from gateway.storage import atomic_write, private_dir

log = logging.getLogger("w3gate.broker")

GATEWAY_USER = "w3gate"
CLI_USER = "w3gate-cli"  # `w3gate device config|firmware`: downlinks, without touching the gateway's session
PBKDF2_ITERATIONS = 101  # mosquitto 2.0's own default for "$7$" (PBKDF2-HMAC-SHA512) hashes
SALT_BYTES = 12


class BrokerError(W3gateError):
    reason = "broker"


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """A mosquitto 2.0 password-file hash: ``$7$<iterations>$<salt b64>$<pbkdf2-sha512 b64>``."""
    salt = salt or secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Identity:
    """One broker user: ``password_hash`` when it logs in with a password (None: a certificate),
    and the topics it may write and read."""

    username: str
    password_hash: str | None = None
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    readwrite: tuple[str, ...] = field(default=())


def gateway_identities(secret: str) -> list[Identity]:
    """The gateway itself, and its command line (same secret, its own client id: a command's
    clean session must never replace the gateway's persistent one)."""
    return [Identity(GATEWAY_USER, password_hash(secret), readwrite=("#",)),
            Identity(CLI_USER, password_hash(secret), write=("backend/#",))]


def pebble_identity(imei: str, *, g1: bool = False) -> Identity:
    """A Pebble, known by its certificate's common name (``nrf-<IMEI>`` for G1 firmware)."""
    name = f"nrf-{imei}" if g1 else imei
    write = dict.fromkeys((f"device/{name}/data", f"device/{imei}/data", f"device/{imei}/confirm",
                           f"device/{imei}/query"))
    return Identity(name, write=tuple(write), read=(f"backend/{imei}/#",))


def publisher_identity(project: str, key: str, hashed: str) -> Identity:
    """A W3bstream publisher of ``project``: its token is its password (``hashed`` is its hash)."""
    return Identity(f"{project}.{key}", hashed, write=(f"{project}/push/#",), read=(f"ack/{key}",))


def _unsafe(text: str) -> bool:
    return any(c.isspace() or c in "#+\x00:" for c in text) or not text


def render_acl(identities: list[Identity]) -> str:
    lines = ["# written by w3gate (gateway/broker/access.py): edits are overwritten at the next sync", ""]
    for ident in sorted(identities, key=lambda i: i.username):
        lines.append(f"user {ident.username}")
        for access, topics in (("readwrite", ident.readwrite), ("write", ident.write), ("read", ident.read)):
            lines.extend(f"topic {access} {t}" for t in topics)
        lines.append("")
    return "\n".join(lines)


def render_passwd(identities: list[Identity]) -> str:
    return "".join(f"{i.username}:{i.password_hash}\n" for i in sorted(identities, key=lambda i: i.username)
                   if i.password_hash)


def sync(files: BrokerFiles, identities: list[Identity]) -> bool:
    """Write the password file and the access rules for ``identities``; when they changed, make
    a running mosquitto reload them. True when something changed."""
    seen: set[str] = set()
    for ident in identities:
        if _unsafe(ident.username) or ident.username in seen:
            raise BrokerError(f"broker identity {ident.username!r} is empty, repeated or has a space, ':', '#' or '+'")
        seen.add(ident.username)
    private_dir(files.dir)
    changed = False
    for path, text in ((files.passwd, render_passwd(identities)), (files.acl, render_acl(identities))):
        try:
            if path.read_text() == text:
                continue
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        atomic_write(path, text.encode(), mode=0o600)
        changed = True
    if changed:
        reload(files)
    return changed


def reload(files: BrokerFiles) -> bool:
    """SIGHUP to the mosquitto that runs with these files (its pid file); False when none runs."""
    try:
        pid = int(files.pid.read_text().strip())
        if pid <= 1:
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # never signal a recycled pid that is not mosquitto
            if b"mosquitto" not in f.read():
                return False
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    log.info("broker %d reloads its identities and access rules", pid)
    return True


def gateway_secret(files: BrokerFiles, *, create: bool = False) -> str | None:
    """The gateway's broker password (made once, 0600); None if there is none and not ``create``."""
    try:
        secret = files.gateway_secret.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    if not create:
        return None
    secret = secrets.token_urlsafe(24)
    private_dir(files.dir)
    atomic_write(files.gateway_secret, (secret + "\n").encode(), mode=0o600)
    return secret


def link_credentials(username: str, password: str, files: BrokerFiles, *, user: str = GATEWAY_USER
                     ) -> tuple[str, str | None] | None:
    """How the gateway (``user`` GATEWAY_USER) or a command (CLI_USER) logs in to the broker:
    the configured username and password when set, else the managed broker's identity, else
    anonymously (None)."""
    if username:
        return username, password or None
    secret = gateway_secret(files)
    return (user, secret) if secret else None
