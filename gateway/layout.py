"""The data directory's layout: every file and directory the gateway keeps there, named once.

Why one place: these names are the on-disk format (a data directory written by an older w3gate must
keep working), and a name spelled in two modules drifts apart. ``Config.layout`` gives the layout;
components take it, or only the path they need, from their caller (a lower layer never reads the
configuration). What lies inside ``records/`` and ``proofs/`` is the record store's and the
anchorer's own business. Nothing here creates anything: each writer makes its file, with its mode,
when it first writes (tests/unit/test_layout.py checks that no other module builds these names).

Every file is 0600 and every directory 0700 (gateway/storage.py makes them so); ``check_permissions``
finds what is looser in a data directory, at start.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# At most this many entries are looked at below the data directory: the record segments are a few
# hundred at most, so a walk that reaches this is not a w3gate data directory (or holds something else).
CHECK_LIMIT = 20_000
_EXAMPLES = 3  # paths named per warning line


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
    def txs(self) -> Path:
        """txs.log: the applets' transactions, a JSON line per status change (the chain thread, `project txs`)."""
        return self.dir / "txs.log"

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
class DashboardFiles:
    """``dashboard/``: what `w3gate dashboard setup` makes for serving the dashboard on the network."""

    dir: Path

    @property
    def tls_cert(self) -> Path:
        """tls.crt: the dashboard's certificate, issued by the gateway's local CA (broker/ca.crt)."""
        return self.dir / "tls.crt"

    @property
    def tls_key(self) -> Path:
        """tls.key: its private key, 0600."""
        return self.dir / "tls.key"

    @property
    def password(self) -> Path:
        """password: the dashboard's password on its first line, 0600 (``[dashboard] password_file``)."""
        return self.dir / "password"


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
    def data_key(self) -> Path:
        """datakey.json: the data key of [buffer] encrypt_at_rest, sealed to the node key, 0600 (`w3gate run`)."""
        return self.root / "datakey.json"

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
    def market(self) -> Path:
        """market/: the purchases this gateway delivers (journal.json) and each one's delivery log."""
        return self.root / "market"

    @property
    def fleet(self) -> Path:
        """fleet/: the emulated Pebbles' keys and devices.json (`w3gate sim pebble` without --fleet-dir)."""
        return self.root / "fleet"

    @property
    def broker(self) -> BrokerFiles:
        """broker/: the managed broker's configuration, identities and certificates."""
        return BrokerFiles(self.root / "broker")

    @property
    def dashboard(self) -> DashboardFiles:
        """dashboard/: the dashboard's certificate, key and password, when served on the network."""
        return DashboardFiles(self.root / "dashboard")

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


def check_permissions(data_dir: Path, *, fix: bool | str = False, limit: int = CHECK_LIMIT) -> list[str]:
    """What in ``data_dir`` other local accounts can read, enter or write: one warning line per
    group of looser paths (the data directory itself; then, per entry of the data directory, its
    directories that are not 0700 and its files that are not 0600), naming the modes seen, a few
    of the paths, and the command that tightens them. An empty list when everything is private or
    ``data_dir`` does not exist yet.

    Only group and other bits count (a 0500 directory or a 0400 file is fine). Symbolic links are
    neither followed nor reported; other users' files are reported and never changed. The broker's
    pid file is not w3gate's (mosquitto writes it 0644) and holds nothing private: it is skipped.
    The walk stops after ``limit`` entries (the last line then says so).

    ``fix``: False only reports. ``"root"`` also tightens the data directory's own mode to 0700, which
    alone keeps every other account out of everything below it; its line then says it did (this is
    what ``w3gate run`` does at start: it leaves files inside as they are, since an operator may
    have widened one on purpose, e.g. to share a certificate bundle). True tightens every looser
    directory and file it finds (group and other bits removed, the owner's kept), and each line
    says so. A path that cannot be changed keeps its warning, with the reason.
    """
    if fix not in (False, True, "root"):
        raise ValueError(f"fix is False, True or 'root', not {fix!r}")
    root = Path(data_dir)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return []
    warnings: list[str] = []
    me = os.geteuid()

    def tighten(path: Path, mode: int) -> str | None:
        """None when tightened, else why not."""
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~0o077)  # never a symlink: those were skipped
            return None
        except OSError as e:
            return e.strerror or str(e)

    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
        line = (f"data directory {root} is {_octal(st.st_mode)} (want 0700): other local accounts can "
                "reach what is inside")
        if fix and st.st_uid == me:
            why = tighten(root, st.st_mode)
            line += "; set to 0700" if why is None else f"; could not set it to 0700 ({why})"
        elif st.st_uid != me:
            line += f"; it belongs to uid {st.st_uid}, not this account (uid {me}): left as it is"
        else:
            line += f"; run: chmod 0700 {root}"
        warnings.append(line)
    if not stat.S_ISDIR(st.st_mode):
        return warnings

    # (top-level name, "directories"|"files") -> [count, modes seen, examples, fixed, not fixed]
    groups: dict[tuple[str, str], list] = {}
    skip = {DataDir(root).broker.pid}
    seen = 0
    stack = [root]
    stopped = False
    while stack and not stopped:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue  # gone meanwhile, or unreadable: nothing to say about its inside
        for entry in entries:
            seen += 1
            if seen > limit:
                stopped = True
                break
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            if path in skip:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(path)
                kind = "directories"
            elif stat.S_ISREG(est.st_mode):
                kind = "files"
            else:
                continue  # symlinks, sockets, FIFOs: not w3gate's own files
            if not est.st_mode & 0o077:
                continue
            rel = path.relative_to(root)
            g = groups.setdefault((rel.parts[0], kind), [0, set(), [], 0, set()])
            g[0] += 1
            g[1].add(_octal(est.st_mode))
            if len(g[2]) < _EXAMPLES:
                g[2].append(str(rel))
            if fix is True:
                why = tighten(path, est.st_mode) if est.st_uid == me else f"owned by uid {est.st_uid}"
                if why is None:
                    g[3] += 1
                else:
                    g[4].add(why)
    for (top, kind), (count, modes, examples, fixed, failures) in sorted(groups.items()):
        want = "0700" if kind == "directories" else "0600"
        one = kind[:-1] if count == 1 else kind
        more = f" and {count - len(examples)} more" if count > len(examples) else ""
        line = (f"{root / top}: {count} {one} open to other local accounts "
                f"({', '.join(sorted(modes))}, want {want}): {', '.join(examples)}{more}")
        if fix is True:
            line += f"; tightened {fixed}"
            if failures:
                line += f", {count - fixed} not ({'; '.join(sorted(failures))})"
        else:
            line += f"; run: chmod -R go= {root / top}"
        warnings.append(line)
    if stopped:
        warnings.append(f"{root}: permission check stopped after {limit} entries; the rest was not checked")
    return warnings


def _octal(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"
