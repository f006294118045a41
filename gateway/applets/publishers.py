"""Publishers: who may send events to a project, by token (W3bstream's publisher access keys).

A token is shown once, when it is created, in upstream's format (``w3b_`` + base64url of
``1_<unix seconds>_<12 random characters>``). Only its SHA-256 is kept, in
``<data>/projects/<name>/publishers.json``, so the file does not leak tokens.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
import time

from gateway.applets.project import NAME, ProjectError, ProjectStore
from gateway.broker.access import password_hash
from gateway.storage import atomic_write

_ALPHABET = string.ascii_letters + string.digits


def new_token() -> str:
    raw = f"1_{int(time.time())}_{''.join(secrets.choice(_ALPHABET) for _ in range(12))}"
    return "w3b_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Publishers:
    def __init__(self, store: ProjectStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[int, dict]] = {}

    def _path(self, project: str):
        return self.store.files(project).publishers

    def _read(self, project: str) -> dict:
        path = self._path(project)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._cache.get(project)
        if cached is None or cached[0] != mtime:
            cached = self._cache[project] = (mtime, json.loads(path.read_text()))
        return cached[1]

    def add(self, project: str, key: str, name: str | None = None) -> str:
        """A new token for publisher ``key`` (a device serial, an IMEI ...); replaces its old one."""
        if self.store.load(project) is None:
            raise ProjectError(f"no project named {project!r}")
        if not NAME.fullmatch(key):
            raise ProjectError("a publisher key is 1-64 letters, digits, '_', '.' or '-'")
        token = new_token()
        publishers = {d: p for d, p in self._read(project).items() if p["key"] != key}
        # "broker": the token's hash in mosquitto's form: a publisher logs in to the broker with it
        publishers[_digest(token)] = {"key": key, "name": name or key, "created": time.time(),
                                      "broker": password_hash(token)}
        atomic_write(self._path(project), json.dumps(publishers, indent=1).encode(), mode=0o600)
        return token

    def remove(self, project: str, key: str) -> bool:
        publishers = self._read(project)
        kept = {d: p for d, p in publishers.items() if p["key"] != key}
        if len(kept) == len(publishers):
            return False
        atomic_write(self._path(project), json.dumps(kept, indent=1).encode(), mode=0o600)
        return True

    def list(self, project: str) -> list[dict]:
        return sorted(self._read(project).values(), key=lambda p: p["key"])

    def authenticate(self, project: str, token: str) -> str | None:
        """The publisher key the token belongs to, or None."""
        entry = self._read(project).get(_digest(token.removeprefix("Bearer ").strip()))
        return entry["key"] if entry else None
