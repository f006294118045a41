"""The data directory's layout: every file and directory the gateway keeps there, named once.

Why one place: these names are the on-disk format (a data directory written by an older w3gate must
keep working), and a name spelled in two modules drifts apart. ``Config.layout`` gives the layout;
components take it, or only the path they need, from their caller (a lower layer never reads the
configuration). What lies inside ``records/`` and ``proofs/`` is the record store's and the
anchorer's own business. Nothing here creates anything: each writer makes its file, with its mode,
when it first writes (tests/unit/test_layout.py checks that no other module builds these names).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def module_file(modules_dir: Path, sha256: str) -> Path:
    """A deployed applet module, content-addressed (the worker process knows only the directory)."""
    return modules_dir / f"{sha256}.wasm"


@dataclass(frozen=True)
class ProjectFiles:
    """One deployed project's directory, ``projects/<name>/``."""

    dir: Path

    @property
    def definition(self) -> Path:
        """project.json: the deployed project (`w3gate project deploy`); its mtime drives live reload."""
        return self.dir / "project.json"

    @property
    def state(self) -> Path:
        """state.sqlite: the applets' KV and SQL state and the project's record cursor (its worker)."""
        return self.dir / "state.sqlite"

    @property
    def applet_log(self) -> Path:
        """applet.log: what the applets log and their failures, JSON lines (the worker, the runtime)."""
        return self.dir / "applet.log"

    @property
    def worker_stderr(self) -> Path:
        """worker.stderr: the worker process's own stderr (a crash's traceback)."""
        return self.dir / "worker.stderr"

    @property
    def metrics(self) -> Path:
        """metrics.log: what the applets submit with stat.ws_submit_metrics (the runtime)."""
        return self.dir / "metrics.log"

    @property
    def publishers(self) -> Path:
        """publishers.json: the event API's publisher tokens, hashed (`w3gate publisher add/remove`)."""
        return self.dir / "publishers.json"

    @property
    def monitors(self) -> Path:
        """monitors.json: how far each chain monitor has delivered (the chain thread)."""
        return self.dir / "monitors.json"


@dataclass(frozen=True)
class ClientFiles:
    """``broker/clients/<name>/``: what one device or tool is provisioned with to reach the broker."""

    dir: Path

    @property
    def ca(self) -> Path:
        """ca.crt: the local CA's certificate, to trust the broker by."""
        return self.dir / "ca.crt"

    @property
    def cert(self) -> Path:
        """client.crt: its certificate; the common name is its broker identity."""
        return self.dir / "client.crt"

    @property
    def key(self) -> Path:
        """client.key: its private key, 0600: provision it, then delete it here."""
        return self.dir / "client.key"


@dataclass(frozen=True)
class BrokerFiles:
    """``broker/``: the mosquitto configuration w3gate writes and manages (gateway/broker/)."""

    dir: Path

    @property
    def conf(self) -> Path:
        """mosquitto.conf: what mosquitto runs with (`mosquitto -c`), written by `w3gate broker setup`."""
        return self.dir / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        """passwd: mosquitto's password file (the gateway and publishers), hashed, rewritten by every sync."""
        return self.dir / "passwd"

    @property
    def acl(self) -> Path:
        """acl: mosquitto's access rules, one block per identity, rewritten by every sync."""
        return self.dir / "acl"

    @property
    def gateway_secret(self) -> Path:
        """gateway.secret: the gateway's own broker password, 0600 (read by `w3gate run`)."""
        return self.dir / "gateway.secret"

    @property
    def ca_cert(self) -> Path:
        """ca.crt: the local CA devices trust (and present certificates from)."""
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """ca.key: the local CA's private key, 0600."""
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        """server.crt: the broker's TLS certificate, issued by the local CA or supplied by the user."""
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        """server.key: its private key, 0600."""
        return self.dir / "server.key"

    @property
    def pid(self) -> Path:
        """mosquitto.pid: the broker's pid (mosquitto writes it), so a sync can make it reload."""
        return self.dir / "mosquitto.pid"

    @property
    def clients(self) -> Path:
        """clients/: certificate bundles issued to devices and publishers, one directory each."""
        return self.dir / "clients"

    def client(self, name: str) -> ClientFiles:
        """clients/<name>/: one identity's certificate bundle (the name is checked by its issuer)."""
        return ClientFiles(self.clients / name)


@dataclass(frozen=True)
class DataDir:
    """The data directory (``data_dir``, ``W3GATE_DATA_DIR``) and what the gateway keeps in it."""

    root: Path

    @property
    def devices(self) -> Path:
        """devices.json: registered Pebbles (`w3gate device add/import/remove`, registration in the node)."""
        return self.root / "devices.json"

    @property
    def legacy_devices(self) -> Path:
        """legacy_devices.json: paired legacy sensors and their keys, 0600 (`w3gate device pair/set/unpair`)."""
        return self.root / "legacy_devices.json"

    @property
    def legacy_seq(self) -> Path:
        """legacy_seq.json: the last frame seq accepted from each legacy sensor (the node's legacy bridge)."""
        return self.root / "legacy_seq.json"

    @property
    def serial_holds(self) -> Path:
        """serial-holds/: one file per serial port another program holds (pairing); the node leaves those alone."""
        return self.root / "serial-holds"

    @property
    def status(self) -> Path:
        """status.json: counters, buffer, degraded components and pid, rewritten as `w3gate run` goes."""
        return self.root / "status.json"

    @property
    def records(self) -> Path:
        """records/: the record buffer (the node's store thread; its inside is gateway/buffer/store.py's)."""
        return self.root / "records"

    @property
    def modules(self) -> Path:
        """modules/: deployed applet modules, ``<sha256>.wasm`` (`w3gate project deploy`)."""
        return self.root / "modules"

    @property
    def projects(self) -> Path:
        """projects/: one directory per deployed project (``project(name)``)."""
        return self.root / "projects"

    @property
    def node_key(self) -> Path:
        """node-key.json: the node key, a V3 keystore, 0600 (`w3gate key new/import`)."""
        return self.root / "node-key.json"

    @property
    def operators(self) -> Path:
        """operators/: operator keys (`w3gate key new --operator NAME`) and their senders' journals."""
        return self.root / "operators"

    @property
    def txjournal(self) -> Path:
        """txjournal.json: the node key's transactions not yet confirmed (the chain thread's sender)."""
        return self.root / "txjournal.json"

    @property
    def proofs(self) -> Path:
        """proofs/: the anchored batches' journal, read by `w3gate proof` (the anchorer's own directory)."""
        return self.root / "proofs"

    @property
    def fleet(self) -> Path:
        """fleet/: the emulated Pebbles' keys and devices.json (`w3gate sim pebble` without --fleet-dir)."""
        return self.root / "fleet"

    @property
    def broker(self) -> BrokerFiles:
        """broker/: the managed broker's configuration, identities and certificates."""
        return BrokerFiles(self.root / "broker")

    def module(self, sha256: str) -> Path:
        """modules/<sha256>.wasm: one deployed module."""
        return module_file(self.modules, sha256)

    def project(self, name: str) -> ProjectFiles:
        """projects/<name>/: one deployed project's files."""
        return ProjectFiles(self.projects / name)

    def operator_key(self, name: str) -> Path:
        """operators/<name>.json: an operator key, a V3 keystore, 0600 (the name is checked by the keystore)."""
        return self.operators / f"{name}.json"

    def operator_txjournal(self, name: str) -> Path:
        """operators/<name>.txjournal.json: that operator's transactions not yet confirmed (the chain thread)."""
        return self.operators / f"{name}.txjournal.json"
