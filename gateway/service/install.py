"""Installing w3gate as a system service: the ``w3gate`` account, ``/etc/w3gate/w3gate.toml``,
``/var/lib/w3gate`` (0700) and the units, on a running Debian or Raspberry Pi OS system, or into
a staging root (``--root DIR``: an image build, the tests) where nothing is run and every command
that would be is printed instead.

Why the account and paths are also written as sysusers.d and tmpfiles.d files: an image built
with ``--root`` never ran useradd or chown for a user its build host does not have; at first boot
systemd-sysusers makes the account and systemd-tmpfiles gives the directories their owner and
mode, so a staged install and a live one end up the same. A configuration that exists is never
overwritten; uninstall keeps configuration and data unless asked to purge them.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gateway.config import DEFAULTS_TOML, Config, load_config
from gateway.errors import W3gateError
from gateway.service.units import (
    BROKER_UNIT,
    CONFIG_PATH,
    DEBIAN_BROKER_UNIT,
    GATEWAY_UNIT,
    PASSPHRASE_PATH,
    SERVICE_USER,
    STATE_DIR,
    Program,
    ServiceError,
    needs,
    sysusers,
    tmpfiles,
    units,
)
from gateway.storage import atomic_write

UNIT_DIR = PurePosixPath("/etc/systemd/system")
SYSUSERS_FILE = PurePosixPath("/etc/sysusers.d/w3gate.conf")
TMPFILES_FILE = PurePosixPath("/etc/tmpfiles.d/w3gate.conf")
NOLOGIN = "/usr/sbin/nologin"
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
GROUP_PACKAGES = {"bluetooth": "bluez", "dialout": "base-passwd", "plugdev": "base-passwd"}
JOURNAL_LINES = 15

Echo = Callable[[str], None]


def config_text() -> str:
    """The defaults (``w3gate config --defaults``) with the service's data directory and the
    passphrase file its first start makes with the node key."""
    text, count = re.subn(r'^data_dir = "[^"]*"', f'data_dir = "{STATE_DIR}"', DEFAULTS_TOML, count=1, flags=re.MULTILINE)
    text, keys = re.subn(r'^key_passphrase_file = "[^"]*"', f'key_passphrase_file = "{PASSPHRASE_PATH}"', text,
                         count=1, flags=re.MULTILINE)
    if count != 1 or keys != 1:
        raise ServiceError("the built-in defaults have no data_dir or key_passphrase_file line to set (a bug in w3gate)")
    return (f"# {CONFIG_PATH}: w3gate as a service (`w3gate service install`). After a change:\n"
            "#   sudo systemctl restart w3gate-broker w3gate\n" + text)


@dataclass
class Session:
    """Where an install goes and how its commands are carried out: run (live), or only printed
    (a staging root, or --dry-run)."""

    root: Path | None
    dry_run: bool
    echo: Echo
    done: list[str] = field(default_factory=list)  # the commands run or printed, in order

    @property
    def live(self) -> bool:
        return self.root is None and not self.dry_run

    def path(self, target: PurePosixPath | str) -> Path:
        """``target`` (absolute on the target system) on this machine."""
        target = PurePosixPath(target)
        return Path(target) if self.root is None else self.root / str(target).lstrip("/")

    def command(self, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess | None:
        """Run ``cmd`` (live) or print it; ServiceError with its own words when it fails."""
        line = shlex.join(cmd)
        self.done.append(line)
        if not self.live:
            self.echo(f"would run: {line}")
            return None
        try:
            result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise ServiceError(f"{cmd[0]} is not installed", reason="missing_command") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{line} did not finish in 120 s", reason="command_failed") from None
        if check and result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(f"{line} exited {result.returncode}: {said[-1] if said else 'no output'}",
                               reason="command_failed")
        self.echo(f"ran: {line}")
        return result

    def write(self, target: PurePosixPath, text: str, mode: int) -> None:
        path = self.path(target)
        if self.dry_run:
            self.echo(f"would write {path} ({mode:04o})")
            return
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, text.encode(), mode=mode)
        self.echo(f"wrote {path} ({mode:04o})")

    def systemctl(self, *args: str) -> list[str]:
        """systemctl for this target: ``--root DIR`` (offline, for the image) when staging."""
        return ["systemctl", *(["--root", str(self.root)] if self.root is not None else []), *args]


def _check_user_name(user: str) -> None:
    if not USER_NAME.fullmatch(user):
        raise ServiceError(f"user name {user!r}: lower-case letters, digits, '_' and '-', at most 31",
                           reason="bad_user")


def _require_root(session: Session) -> None:
    if session.live and os.geteuid() != 0:
        raise ServiceError("installing a system service needs root: sudo w3gate service ... "
                           "(or --root DIR to stage into a directory, --dry-run to see the steps)", reason="not_root")


def _require_systemd(session: Session) -> None:
    if session.live and not Path("/run/systemd/system").is_dir():
        raise ServiceError("systemd is not running on this machine (no /run/systemd/system): the units could "
                           "not run here; use --root DIR to stage them for another system", reason="no_systemd")


def _load(path: Path) -> Config:
    """The target's configuration, as the service will read it (no W3GATE_* from this shell)."""
    return load_config(path, env={})


def _groups_of(session: Session) -> set[str] | None:
    """The groups the target system has; None when a staging root has no /etc/group to tell."""
    if session.root is None:
        return {g.gr_name for g in grp.getgrall()}
    try:
        text = session.path("/etc/group").read_text()
    except FileNotFoundError:
        return None
    return {line.split(":", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` to the service account; its inside too when it belonged to someone else
    (a data directory moved from a user's own run), as systemd does for its StateDirectory."""
    st = path.lstat()
    if st.st_uid == uid and st.st_gid == gid:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid)


def install(*, program: Program, root: Path | None = None, user: str = SERVICE_USER, dry_run: bool = False,
            echo: Echo = print) -> Session:
    """Install (or bring up to date) the service; returns the session (what was run or printed)."""
    _check_user_name(user)
    session = Session(root, dry_run, echo)
    _require_root(session)
    _require_systemd(session)

    # the configuration the units are rendered from: checked before anything is changed
    config_file = session.path(CONFIG_PATH)
    exists = config_file.exists()
    config = _load(config_file) if exists else load_config(None, env={"W3GATE_DATA_DIR": str(STATE_DIR)})
    rendered = units(config, program, user=user)  # a relative data_dir stops here
    need = needs(config)
    have = _groups_of(session)
    missing = [g for g in need.groups if have is not None and g not in have]
    if missing:  # the unit would not start without them
        packages = " ".join(sorted({GROUP_PACKAGES.get(g, g) for g in missing}))
        text = (f"group {', '.join(missing)} does not exist on the target system, and the configured serial/BLE "
                f"sources need it (apt-get install {packages})")
        if session.live:
            raise ServiceError(text, reason="missing_group")
        echo(f"warning: {text}")

    # the account
    useradd = ["useradd", *(["--root", str(root)] if root is not None else []), "--system", "--user-group",
               "--home-dir", str(STATE_DIR), "--no-create-home", "--shell", NOLOGIN, "--comment", "w3gate edge node",
               user]
    if root is None and _user_exists(user):
        echo(f"user {user} exists")
    else:
        session.command(useradd)
        if root is not None:
            echo(f"(or at first boot: systemd-sysusers makes {user} from {SYSUSERS_FILE})")
    ids = (pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid) if session.live else None

    # the configuration file: made from the defaults once, never overwritten
    if exists:
        echo(f"kept {config_file} (it exists; never overwritten)")
    else:
        session.write(CONFIG_PATH, config_text(), 0o640)
    if ids is not None:
        os.chown(config_file, 0, ids[1])  # root writes it, the service's group reads it

    # the data directory (and the account's home, when data_dir is elsewhere)
    data_dirs = dict.fromkeys((PurePosixPath(str(STATE_DIR)), PurePosixPath(str(config.data_dir))))
    for target in data_dirs:
        path = session.path(target)
        if dry_run:
            echo(f"would make {path} (0700, owner {user})")
            continue
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        if ids is not None:
            _chown_tree(path, *ids)
        echo(f"made {path} (0700{f', owner {user}' if ids is not None else ''})")

    # the units, and the account and paths for systemd to keep right at every boot
    for name, text in rendered.items():
        session.write(UNIT_DIR / name, text, 0o644)
    session.write(SYSUSERS_FILE, sysusers(user), 0o644)
    session.write(TMPFILES_FILE, tmpfiles(config, user), 0o644)
    for warning in need.warnings:
        echo(f"warning: {warning}")

    # Debian's mosquitto listens on the same port as ours
    if BROKER_UNIT in rendered:
        if session.live:
            enabled = session.command(session.systemctl("is-enabled", "--quiet", DEBIAN_BROKER_UNIT), check=False)
            active = session.command(session.systemctl("is-active", "--quiet", DEBIAN_BROKER_UNIT), check=False)
            if enabled.returncode == 0 or active.returncode == 0:
                echo(f"{DEBIAN_BROKER_UNIT} (Debian's mosquitto) would take the same port: disabling it")
                session.command(session.systemctl("disable", "--now", DEBIAN_BROKER_UNIT))
        else:
            session.command(session.systemctl("disable", DEBIAN_BROKER_UNIT))
    names = [n for n in (BROKER_UNIT, GATEWAY_UNIT) if n in rendered]
    if session.root is None:
        session.command(session.systemctl("daemon-reload"))
        session.command(session.systemctl("enable", "--now", *names))
    else:
        session.command(session.systemctl("enable", *names))
    if session.live:
        echo(f"w3gate runs as a service: w3gate service status; journalctl -u {GATEWAY_UNIT} -f")
    return session


def uninstall(*, root: Path | None = None, purge_data: bool = False, dry_run: bool = False,
              echo: Echo = print) -> Session:
    """Stop and remove the units (and the sysusers/tmpfiles files); keep configuration and data
    unless ``purge_data`` (the data directory holds the node key and every buffered record)."""
    session = Session(root, dry_run, echo)
    _require_root(session)
    present = [n for n in (GATEWAY_UNIT, BROKER_UNIT) if session.path(UNIT_DIR / n).exists()]
    if present and root is None and Path("/run/systemd/system").is_dir():
        session.command(session.systemctl("disable", "--now", *present), check=False)
    elif present and root is not None:
        session.command(session.systemctl("disable", *present))
    for target in (*(UNIT_DIR / n for n in present), SYSUSERS_FILE, TMPFILES_FILE):
        path = session.path(target)
        if not path.exists():
            continue
        if dry_run:
            echo(f"would remove {path}")
        else:
            path.unlink()
            echo(f"removed {path}")
    if present and session.live and Path("/run/systemd/system").is_dir():
        session.command(session.systemctl("daemon-reload"))
    config_file = session.path(CONFIG_PATH)
    data_dirs = [PurePosixPath(str(STATE_DIR))]
    try:
        data = PurePosixPath(str(_load(config_file).data_dir)) if config_file.exists() else None
        if data is not None and data.is_absolute() and data not in data_dirs:
            data_dirs.append(data)
    except W3gateError as e:
        echo(f"warning: {e}: only {STATE_DIR} is taken as the data directory")
    if not purge_data:
        echo(f"kept {config_file} and the data in {', '.join(str(session.path(d)) for d in data_dirs)} "
             "(--purge-data removes them)")
    else:
        for target in data_dirs:
            if len(target.parts) < 3:  # never "/", "/var", "/srv"
                raise ServiceError(f"data directory {target} is too near the root to remove: remove it by hand",
                                   reason="refused")
        for path in [session.path(d) for d in data_dirs] + [config_file.parent]:
            if not path.exists():
                continue
            if dry_run:
                echo(f"would remove {path} and everything in it")
            else:
                shutil.rmtree(path)
                echo(f"removed {path} and everything in it")
    echo(f"the account {SERVICE_USER} stays (userdel {SERVICE_USER} removes it); Debian's {DEBIAN_BROKER_UNIT} "
         "stays disabled (systemctl enable --now mosquitto)")
    return session


@dataclass(frozen=True)
class UnitState:
    name: str
    installed: bool
    active: str  # systemctl is-active's word, or "unknown"
    enabled: str  # systemctl is-enabled's word, or "unknown"


def status(*, lines: int = JOURNAL_LINES) -> dict:
    """The units' state, and the gateway's last journal lines; ``note`` says what could not be
    asked and why (no systemd here, no journalctl, no permission to read the journal)."""
    systemd = Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None
    out: dict = {"units": [], "journal": [], "note": None}
    for name in (GATEWAY_UNIT, BROKER_UNIT):
        installed = Path(str(UNIT_DIR / name)).exists()
        active = enabled = "unknown"
        if systemd:
            active = _word(["systemctl", "is-active", name])
            enabled = _word(["systemctl", "is-enabled", name])
        out["units"].append(UnitState(name, installed, active, enabled).__dict__)
    if not systemd:
        out["note"] = ("systemd is not running on this machine (no /run/systemd/system), so the units cannot be "
                       "active here; their files are shown as installed or not")
        return out
    if shutil.which("journalctl") is None:
        out["note"] = "journalctl is not installed: no log lines to show"
        return out
    result = subprocess.run(["journalctl", "--unit", GATEWAY_UNIT, "--lines", str(lines), "--no-pager",
                             "--output", "short-iso", "--quiet"], check=False, capture_output=True, text=True, timeout=30)
    out["journal"] = [l for l in result.stdout.splitlines() if l.strip()]
    if result.returncode != 0 or (not out["journal"] and os.geteuid() != 0):
        out["note"] = ("the journal could not be read" + (f": {result.stderr.strip()}" if result.stderr.strip() else "")
                       + " (members of the adm or systemd-journal group, or root, may read it)")
    return out


def _word(cmd: list[str]) -> str:
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"
