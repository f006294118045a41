"""``w3gate doctor``: is this machine set up to run the gateway? One result per check, each with
what was found and, when it is not ok, the one command or setting that fixes it (docs/doctor.md).

Why it is shaped like this:

- **A check never raises.** Every check is a small function returning a ``Check``; a failure to
  check (a file it cannot read, a tool that is missing) is itself a result that says why. A check
  that raises anyway is a bug of ours: ``guarded`` turns it into a FAIL naming the exception, so
  the run still ends with every other line and an honest exit status.
- **Fast.** The groups run side by side in threads, every network probe has a short timeout
  (``TIMEOUT_S``, ``RPC_TIMEOUT_S``), and the buffer is read, read-only, no further than the last
  few hundred records: the whole run takes a second or two, under three.
- **Harmless to a running gateway.** Nothing is written. The broker is never logged in to as the
  gateway itself (``w3gate``): the broker uses the username as the client id, so a login as
  ``w3gate`` would take over the gateway's persistent session (and a clean one would discard the
  messages it holds). The managed broker's command-line identity (``w3gate-cli``, the same
  secret) proves the secret instead, and configured credentials are tried with a client id of
  their own, or read from the running gateway's status.
- **Levels.** FAIL: the gateway cannot work as configured (exit status 1). WARN: it works, but
  something is at risk (a clock nobody synchronises, a disk that would fill before the buffer's
  bound). skip: the feature is off, or the check cannot be made here (and it says why).
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import enum
import glob
import grp
import ipaddress
import math
import os
import pwd
import re
import shutil
import socket
import stat
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gateway.config import Config
from gateway.layout import DataDir, check_permissions

TIMEOUT_S = 1.0  # a TCP connect or an MQTT CONNACK on the LAN
RPC_TIMEOUT_S = 2.0  # one JSON-RPC call to the chain (a public endpoint may be slow)
TOOL_TIMEOUT_S = 1.5  # timedatectl, bluetoothctl (which waits forever for a bluetoothd that is not there)
RUNNING_STATUS_AGE_S = 10.0  # status.json older than this: the gateway is not running (as `w3gate status`)

SKEW_SAMPLES = 200  # the most recent Pebble records whose rx - ts is looked at
SKEW_SCAN_LIMIT = 5000  # records read at most to find them (legacy records in between)
SKEW_MARGIN = 0.5  # WARN once the median skew uses more than this share of the verify window
CLOCK_REFUSED_SHARE = 0.1  # WARN when stale + future refusals are this share of Pebble traffic

RECORD_BYTES_FLOOR = 1024  # bytes per record on disk when the buffer holds too few to measure
MEASURE_MIN_RECORDS = 100  # records needed before the buffer's own average is trusted
DISK_RESERVE_BYTES = 64 * 1024 * 1024  # beside the buffer: applet state, journals, temp copies, logs
DISK_FAIL_BYTES = 64 * 1024 * 1024  # less free than this: writes are about to fail
INODE_RESERVE = 1000  # files beside the segments (temp files, projects, journals)
INODE_FAIL = 500  # fewer free inodes than this: new files are about to fail

KERNEL_UNSYNCED_MAXERROR_US = 16_000_000  # what systemd's ntp_synced() compares adjtimex's maxerror with
MQTT_REFUSED = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                4: "bad user name or password", 5: "not authorised", 128: "unspecified error",
                133: "client id rejected", 134: "bad user name or password", 135: "not authorised"}


class Level(str, enum.Enum):
    """How a check came out; the value is the word printed."""

    OK = "ok"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One line of the report: the check's ``name``, its ``level``, what was ``found`` and, for
    anything not ok, a ``hint`` naming the command or setting that fixes it."""

    name: str
    level: Level
    found: str
    hint: str = ""

    def line(self, width: int = 22) -> str:
        text = f"{self.level.value:<4}  {self.name:<{width}}  {self.found}"
        if self.hint and self.level in (Level.WARN, Level.FAIL):
            text += f"  -> fix: {self.hint}"
        return text

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.level.value, "found": self.found,
                "hint": self.hint if self.level in (Level.WARN, Level.FAIL) else ""}


def ok(name: str, found: str) -> Check:
    return Check(name, Level.OK, found)


def warn(name: str, found: str, hint: str) -> Check:
    return Check(name, Level.WARN, found, hint)


def fail(name: str, found: str, hint: str) -> Check:
    return Check(name, Level.FAIL, found, hint)


def skip(name: str, why: str) -> Check:
    return Check(name, Level.SKIP, why)


@dataclass(frozen=True)
class Report:
    """Every check's result, in the order the groups are listed."""

    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.level is Level.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when nothing FAILs (warnings allowed), 1 otherwise."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        return {level.value: sum(c.level is level for c in self.checks) for level in Level}

    def summary(self) -> str:
        counts = self.counts()
        verdict = "FAILED" if self.failed else "passed"
        return (f"doctor {verdict}: {counts['FAIL']} FAIL, {counts['WARN']} WARN, {counts['ok']} ok, "
                f"{counts['skip']} skip")

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=0)
        return [c.line(width) for c in self.checks] + [self.summary()]

    def to_dict(self) -> dict:
        return {"ok": not self.failed, "exit": self.exit_code, "counts": self.counts(),
                "checks": [c.to_dict() for c in self.checks]}


# -- what every group shares ---------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None




def cmdline(pid: int) -> str:
    """A process's command line, shortened for a report line ("" when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = raw.replace(b"\x00", b" ").decode(errors="replace").strip()
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Facts:
    """What several checks need, gathered once: the configuration, the running gateway's status
    (its pid only while alive) and the managed broker's pid (only while it is mosquitto)."""

    config: Config
    status: dict = field(default_factory=dict)
    gateway_pid: int | None = None
    gateway_running: bool = False  # alive and writing its status
    broker_pid: int | None = None
    timeout: float = TIMEOUT_S
    rpc_timeout: float = RPC_TIMEOUT_S

    @property
    def layout(self) -> DataDir:
        return self.config.layout

    @classmethod
    def gather(cls, config: Config) -> Facts:
        layout = config.layout
        try:
            from gateway.status import pid_alive, read_status

            status = read_status(layout.status) or {}
        except OSError:
            status = {}
        status = status if isinstance(status, dict) else {}
        pid = status.get("pid") if isinstance(status.get("pid"), int) else None
        alive = pid_alive(pid)
        try:
            age = time.time() - float(status.get("time") or 0)
        except (TypeError, ValueError):  # a hand-edited status.json: not a running gateway's
            age = math.inf
        broker = _read_pid(layout.broker.pid)
        if broker is not None and "mosquitto" not in cmdline(broker):  # a recycled pid is not our broker
            broker = None
        return cls(config, status, pid if alive else None, alive and age < RUNNING_STATUS_AGE_S, broker)


def guarded(group: Callable[[Facts], list[Check]], facts: Facts) -> list[Check]:
    """``group``'s results; should it raise anyway (a bug of ours), one FAIL saying so, so that a
    broken check never passes for a healthy one."""
    try:
        return group(facts)
    except Exception as e:  # noqa: BLE001 - no check may end the run
        name = group.__name__.removesuffix("_checks").replace("_", " ")
        return [fail(name, f"could not check: {type(e).__name__}: {e}",
                     "a bug in `w3gate doctor`: please report this line")]


def _short_error(e: BaseException) -> str:
    """The useful end of a long network error (requests nests its cause several times)."""
    text = str(e) or type(e).__name__
    found = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return found[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return text if len(text) <= 120 else text[:117] + "..."


# -- broker ----------------------------------------------------------------------------------------


def tcp_reachable(host: str, port: int, timeout: float) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return _short_error(e) if not isinstance(e, TimeoutError) else "timed out"


def mqtt_connect(host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, timeout: float = TIMEOUT_S) -> int | str:
    """Log in with a clean session and leave at once: the CONNACK's reason code (0: accepted),
    or why no CONNACK came ("closed", "timed out", a socket error)."""
    import paho.mqtt.client as mqtt

    answer: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311, reconnect_on_failure=False)
    client.connect_timeout = timeout
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, flags, rc, props: answer.append(int(rc.value))
    try:
        client.connect(host, port, keepalive=10)
    except OSError as e:
        return _short_error(e)
    deadline = time.monotonic() + timeout
    closed = False
    try:
        while not answer and not closed and time.monotonic() < deadline:
            closed = client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS
        if answer and answer[0] == 0:
            client.disconnect()
            client.loop(timeout=0.05)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    if answer:
        return answer[0]
    return "closed" if closed else "timed out"


def _refusal(code: int | str) -> str:
    if isinstance(code, str):
        return code
    return f"{MQTT_REFUSED.get(code, 'refused')} (CONNACK {code})"


def _broker_run_hint(config: Config) -> str:
    files = config.layout.broker
    if not config.broker.managed:
        return f"start your MQTT broker, or point [mqtt] host / port at it (now {config.mqtt.host}:{config.mqtt.port})"
    if not files.conf.exists():
        return "`w3gate broker setup`, then `w3gate broker run`"
    if config.mqtt.port != config.broker.local_port:
        return (f"[mqtt] port = {config.broker.local_port} (the managed broker's [broker] local_port), "
                "or start the broker: `w3gate broker run`")
    return f"`w3gate broker run` (or mosquitto -c {files.conf.resolve()})"


def check_broker_reachable(config: Config, timeout: float) -> Check:
    host, port = config.mqtt.host, config.mqtt.port
    why = tcp_reachable(host, port, timeout)
    if why is None:
        return ok("broker reachable", f"{host}:{port} takes connections")
    return fail("broker reachable", f"nothing answers at {host}:{port} ({why})", _broker_run_hint(config))


def check_broker_secured(config: Config, timeout: float) -> Check:
    """Anonymous clients must be refused: any one on the LAN could otherwise publish as a device,
    read readings, or take the gateway's session."""
    host, port = config.mqtt.host, config.mqtt.port
    code = mqtt_connect(host, port, client_id=f"w3gate-doctor-{os.getpid()}", timeout=timeout)
    if code == 0:
        if config.broker.managed:
            hint = (f"`w3gate broker setup`, then run mosquitto with that configuration: `w3gate broker run` "
                    f"(mosquitto -c {config.layout.broker.conf.resolve()}), not an open one")
        else:
            hint = ("`allow_anonymous false` and a password_file in your broker's configuration, or let w3gate "
                    "manage it: [broker] managed = true and `w3gate broker setup`")
        return fail("broker secured", f"anonymous clients are let in at {host}:{port}", hint)
    if isinstance(code, int):
        return ok("broker secured", f"anonymous login refused ({_refusal(code)})")
    if code == "closed":
        return ok("broker secured", "anonymous login refused (the broker closed the connection)")
    return warn("broker secured", f"no answer to an anonymous login ({code})",
                "is it an MQTT broker? check [mqtt] host / port")


def _gateway_logged_in(facts: Facts) -> bool:
    mqtt_status = facts.status.get("mqtt") or {}
    return bool(facts.gateway_running and mqtt_status.get("connected")
                and mqtt_status.get("broker") == f"{facts.config.mqtt.host}:{facts.config.mqtt.port}")


def check_broker_credentials(facts: Facts) -> Check:
    """The gateway's own login is accepted (see the module docstring for whom it logs in as)."""
    from gateway.broker import access

    config = facts.config
    mq, files = config.mqtt, config.layout.broker
    name = "broker credentials"
    try:
        creds = access.link_credentials(mq.username, mq.password, files, user=access.CLI_USER)
    except OSError as e:
        return fail(name, f"cannot read {files.gateway_secret}: {e.strerror or e}",
                    f"run doctor as the account the gateway runs as, or `chmod 600 {files.gateway_secret}` "
                    "(owned by that account)")
    if creds is None:
        hint = ("`w3gate broker setup` (makes the gateway's broker identity)" if config.broker.managed
                else "[mqtt] username and password (the broker's account for the gateway)")
        return fail(name, f"none: [mqtt] username is empty and there is no {files.gateway_secret}", hint)
    user, password = creds
    if mq.username and _gateway_logged_in(facts):
        return ok(name, f"{mq.username}: the running gateway (pid {facts.gateway_pid}) is logged in with them")
    client_id = f"{mq.client_id}-doctor-{os.getpid()}"
    if user == access.GATEWAY_USER and config.broker.managed:
        user, client_id = access.CLI_USER, access.CLI_USER  # never as w3gate: that would take its session
    elif user == access.CLI_USER:
        client_id = access.CLI_USER
    code = mqtt_connect(mq.host, mq.port, client_id=client_id, username=user, password=password,
                        timeout=facts.timeout)
    source = "[mqtt] username / password" if mq.username else str(files.gateway_secret)
    if code == 0:
        return ok(name, f"{user} logs in with {source}")
    if config.broker.managed and not mq.username:
        hint = ("`w3gate broker sync` (rewrites the password file from the gateway's secret; "
                "the broker reloads it), or `w3gate broker setup`")
    else:
        hint = "[mqtt] username / password: the account your broker has for the gateway"
    return fail(name, f"{user} ({source}) is refused: {_refusal(code)}", hint)


PRIVATE_BROKER_FILES = ("passwd", "acl", "gateway_secret", "ca_key", "server_key")
BROKER_FILES = ("conf", "ca_cert", "server_cert", *PRIVATE_BROKER_FILES)


def check_broker_files(config: Config) -> Check:
    """The managed broker's files are there, and the private ones 0600 (group and others nothing)."""
    files = config.layout.broker
    name = "broker files"
    if not files.conf.exists():
        return fail(name, f"not set up: no {files.conf}", "`w3gate broker setup`")
    missing, loose = [], []
    for attr in BROKER_FILES:
        path: Path = getattr(files, attr)
        try:
            st = path.stat()
        except FileNotFoundError:
            missing.append(path.name)
            continue
        except OSError as e:
            return fail(name, f"cannot read {path}: {e.strerror or e}", "run doctor as the account the gateway runs as")
        if attr in PRIVATE_BROKER_FILES and st.st_mode & 0o077:
            loose.append((path, stat.S_IMODE(st.st_mode)))
    if missing:
        return fail(name, f"missing in {files.dir}: {', '.join(missing)}", "`w3gate broker setup` (keeps what exists)")
    if loose:
        listed = ", ".join(f"{p.name} {m:04o}" for p, m in loose)
        return fail(name, f"private files open to other accounts: {listed}",
                    "chmod 600 " + " ".join(str(p) for p, _ in loose))
    return ok(name, f"{files.dir}: configuration, identities and certificates present, private ones 0600")


def broker_checks(facts: Facts) -> list[Check]:
    config = facts.config
    out = [check_broker_reachable(config, facts.timeout)]
    if out[0].level is Level.OK:
        out += [check_broker_secured(config, facts.timeout), check_broker_credentials(facts)]
    else:
        out += [skip("broker secured", "the broker is not reachable"),
                skip("broker credentials", "the broker is not reachable")]
    out.append(check_broker_files(config) if config.broker.managed
               else skip("broker files", "[broker] managed = false: your own broker"))
    return out


# -- clock -----------------------------------------------------------------------------------------


def run_tool(args: Sequence[str], timeout: float = TOOL_TIMEOUT_S) -> tuple[int | None, str]:
    """(exit status, stdout + stderr) of a short command; (None, why) when it cannot run or hangs."""
    exe = shutil.which(args[0])
    if exe is None:
        return None, f"{args[0]} is not installed"
    try:
        done = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"{args[0]} did not answer within {timeout:g} s"
    except OSError as e:
        return None, f"{args[0]}: {e.strerror or e}"
    return done.returncode, (done.stdout + done.stderr).strip()


class _Timex(ctypes.Structure):
    """The head of the kernel's ``struct timex`` (adjtimex(2)); the rest is room to spare."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


def kernel_synced() -> tuple[bool | None, str]:
    """The kernel's own view, what timedatectl itself reports (systemd's ntp_synced(): adjtimex's
    maxerror below 16 s): (synchronised, detail), or (None, why not known)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()
        if libc.adjtimex(ctypes.byref(timex)) < 0:
            return None, f"adjtimex: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as e:
        return None, f"adjtimex is not available ({e})"
    synced = timex.maxerror < KERNEL_UNSYNCED_MAXERROR_US
    return synced, f"kernel maximum error {timex.maxerror / 1e6:g} s"


def check_clock_synchronised(tool: Callable[[Sequence[str]], tuple[int | None, str]] = run_tool,
                             kernel: Callable[[], tuple[bool | None, str]] = kernel_synced) -> tuple[Check, bool | None]:
    """Is the system clock synchronised (NTP)? timedatectl when it answers, else the kernel's own
    flag (what timedatectl reads); the check and the answer (None: not known)."""
    name = "clock synchronised"
    code, out = tool(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    word = out.strip().lower() if code == 0 else ""
    if word in ("yes", "no"):
        synced, source = word == "yes", "timedatectl"
    else:
        why_tool = out.splitlines()[0].split(". ")[0].rstrip(".") if out else f"timedatectl exited {code}"
        synced, detail = kernel()
        if synced is None:
            return skip(name, f"cannot tell: {why_tool}; {detail}"), None
        source = f"{detail}; timedatectl: {why_tool}"
    if synced:
        return ok(name, f"synchronised ({source})"), True
    return warn(name, f"not synchronised ({source}): device timestamps are judged against this clock",
                "`sudo timedatectl set-ntp true` (with systemd-timesyncd or chrony installed)"), False


def median_skew(records: Iterable[dict], limit: int = SKEW_SAMPLES) -> tuple[float | None, int]:
    """Median of rx - ts (seconds; positive: the device's clock is behind ours) over the first
    ``limit`` Pebble records of ``records``, and how many there were."""
    skews = []
    for doc in records:
        if doc.get("trust") != "secure-element":  # legacy records carry the gateway's own time
            continue
        rx, ts = doc.get("rx"), doc.get("ts")
        if isinstance(rx, (int, float)) and isinstance(ts, (int, float)) and math.isfinite(rx):
            skews.append(float(rx) - float(ts))
            if len(skews) >= limit:
                break
    return (statistics.median(skews) if skews else None), len(skews)


def skew_level(median: float, max_age_s: float, max_future_s: float, margin: float = SKEW_MARGIN) -> Level:
    """WARN once the typical reading uses more than ``margin`` of the window the verifier allows
    (``max_age_s`` behind, ``max_future_s`` ahead): a little more drift and readings are refused."""
    if median > max_age_s * margin or -median > max_future_s * margin:
        return Level.WARN
    return Level.OK


def _recent_pebble_records(records_dir: Path) -> Iterable[dict]:
    from gateway.buffer.store import RecordStore

    store = RecordStore(records_dir, readonly=True)
    try:
        yield from store.iter_records(newest_first=True, limit=SKEW_SCAN_LIMIT)
    finally:
        store.close()


def check_clock_skew(facts: Facts, synced: bool | None,
                     records: Callable[[Path], Iterable[dict]] = _recent_pebble_records) -> Check:
    name = "clock skew"
    records_dir, verify = facts.layout.records, facts.config.verify
    if not records_dir.is_dir():
        return skip(name, f"no buffer yet ({records_dir})")
    try:
        median, count = median_skew(records(records_dir))
    except Exception as e:  # noqa: BLE001 - a damaged or unreadable buffer is reported, not raised
        return warn(name, f"cannot read the buffer: {type(e).__name__}: {e}", "`w3gate buffer check`")
    refused = facts.status.get("rejected") or {}
    clock_refused = int(refused.get("stale", 0) or 0) + int(refused.get("future", 0) or 0)
    accepted = int(facts.status.get("accepted_total", 0) or 0)
    refused_note = (f"; status: {refused.get('stale', 0)} stale and {refused.get('future', 0)} future refused"
                    if clock_refused else "")
    clock_hint = ("the devices' clocks are off (a Pebble sets its clock from the LTE network), or widen "
                  "[verify] max_age_s / max_future_s" if synced else
                  "`sudo timedatectl set-ntp true`: this clock is not synchronised")
    if median is None:
        if clock_refused and clock_refused >= CLOCK_REFUSED_SHARE * (accepted + clock_refused):
            return warn(name, f"no Pebble readings in the buffer{refused_note}", clock_hint)
        return skip(name, f"no Pebble readings in the buffer yet{refused_note}")
    found = (f"median rx - ts {median:+.1f} s over the last {count} Pebble readings (accepted: "
             f"-{verify.max_future_s:g} s .. +{verify.max_age_s:g} s){refused_note}")
    level = skew_level(median, verify.max_age_s, verify.max_future_s)
    if level is Level.OK and clock_refused and clock_refused >= CLOCK_REFUSED_SHARE * (accepted + clock_refused):
        level = Level.WARN
    return Check(name, level, found, clock_hint if level is not Level.OK else "")


def clock_checks(facts: Facts) -> list[Check]:
    synced_check, synced = check_clock_synchronised()
    return [synced_check, check_clock_skew(facts, synced)]


# -- disk ------------------------------------------------------------------------------------------


def existing_dir(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where the data directory will live."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_level(free_bytes: int, need_bytes: int) -> Level:
    """FAIL when the disk is all but full now; WARN when the buffer could fill it before reaching
    its own bound ([buffer] max_records)."""
    if free_bytes < DISK_FAIL_BYTES and free_bytes < need_bytes:
        return Level.FAIL
    if free_bytes < need_bytes:
        return Level.WARN
    return Level.OK


def inode_level(free: int, total: int, need: int) -> Level:
    if total == 0:  # btrfs and friends: no fixed inode table
        return Level.OK
    if free < INODE_FAIL and free < need:
        return Level.FAIL
    if free < need:
        return Level.WARN
    return Level.OK


def _size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def buffer_stats(records_dir: Path) -> tuple[int, int]:
    """(records held, bytes on disk) of the buffer, (0, 0) when there is none yet."""
    if not records_dir.is_dir():
        return 0, 0
    from gateway.buffer.store import RecordStore

    store = RecordStore(records_dir, readonly=True)
    try:
        stats = store.stats()
    finally:
        store.close()
    return int(stats["records"]), int(stats["bytes"])


def disk_checks(facts: Facts, stats: Callable[[Path], tuple[int, int]] = buffer_stats) -> list[Check]:
    config = facts.config
    where = existing_dir(config.data_dir)
    try:
        vfs = os.statvfs(where)
    except OSError as e:
        why = f"cannot stat {where}: {e.strerror or e}"
        return [fail("disk space", why, "check the data directory's file system"),
                skip("disk inodes", why)]
    try:
        held, held_bytes = stats(config.layout.records)
        measured = held >= MEASURE_MIN_RECORDS
    except Exception as e:  # noqa: BLE001 - a damaged buffer still leaves the disk to check
        held, held_bytes, measured = 0, 0, False
        note = f" (the buffer could not be read: {type(e).__name__})"
    else:
        note = ""
    per_record = held_bytes / held if measured else RECORD_BYTES_FLOOR
    remaining = max(0, config.buffer.max_records - held)
    need = int(remaining * per_record) + DISK_RESERVE_BYTES
    free = vfs.f_bavail * vfs.f_frsize
    level = disk_level(free, need)
    basis = "measured" if measured else "assumed"
    found = (f"{_size(free)} free at {where}; the buffer may still grow by {_size(remaining * per_record)} "
             f"({remaining:,} records x {per_record:.0f} B {basis}) plus {_size(DISK_RESERVE_BYTES)} beside it{note}")
    fits = max(0, int((free - DISK_RESERVE_BYTES) / per_record) + held)
    hints = {Level.FAIL: f"free space on {where}: the gateway's writes fail when the disk is full",
             Level.WARN: f"free space on {where}, or lower [buffer] max_records to about {fits:,} (what fits)"}
    space = Check("disk space", level, found, hints.get(level, ""))
    need_inodes = math.ceil(remaining / config.buffer.segment_records) + INODE_RESERVE
    ilevel = inode_level(vfs.f_favail, vfs.f_files, need_inodes)
    if vfs.f_files == 0:
        ifound = f"no fixed inode table at {where}"
    else:
        ifound = f"{vfs.f_favail:,} free inodes at {where}; the buffer needs up to {need_inodes:,} more files"
    ihint = (f"remove files on that file system (`df -i {where}`), or raise [buffer] segment_records "
             "(fewer, larger segment files)")
    inodes = Check("disk inodes", ilevel, ifound, ihint if ilevel is not Level.OK else "")
    return [space, inodes]


# -- data directory permissions --------------------------------------------------------------------


def permission_checks(facts: Facts) -> list[Check]:
    """What ``w3gate run`` warns about at start (gateway/layout.py check_permissions): here a FAIL,
    since node keys, broker secrets and device keys live there."""
    root = facts.config.data_dir
    name = "data dir permissions"
    if not root.exists():
        return [skip(name, f"no data directory yet at {root} (`w3gate run` makes it, 0700)")]
    lines = check_permissions(root)
    if not lines:
        return [ok(name, f"{root}: private (directories 0700, files 0600)")]
    found, commands = [], []
    for line in lines:
        text, _, command = line.partition("; run: ")
        found.append(text)
        if command:
            commands.append(command)
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    hint = " && ".join(commands) if 0 < len(commands) <= 2 else f"chmod -R go= {root}"
    return [fail(name, found[0] + more, hint)]


# -- Bluetooth -------------------------------------------------------------------------------------


def bluetooth_adapters(sysfs: Path = Path("/sys/class/bluetooth")) -> list[str]:
    try:
        return sorted(p.name for p in sysfs.iterdir() if re.fullmatch(r"hci\d+", p.name))
    except OSError:
        return []


def rfkill_blocked(adapter: str, sysfs: Path = Path("/sys/class/bluetooth")) -> str | None:
    """"soft"/"hard" when the adapter's radio is blocked (rfkill), else None."""
    for entry in sorted((sysfs / adapter).glob("rfkill*")):
        for kind in ("hard", "soft"):
            try:
                if (entry / kind).read_text().strip() == "1":
                    return kind
            except OSError:
                continue
    return None


def parse_powered(show: str) -> bool | None:
    """``Powered: yes|no`` from `bluetoothctl show`; None when it is not there."""
    match = re.search(r"^\s*Powered:\s*(yes|no)\s*$", show, re.MULTILINE)
    return None if match is None else match.group(1) == "yes"


def bluetooth_checks(facts: Facts, sysfs: Path = Path("/sys/class/bluetooth"),
                     tool: Callable[[Sequence[str]], tuple[int | None, str]] = run_tool) -> list[Check]:
    ble = facts.config.ble
    if not ble.enabled:
        return [skip("bluetooth", "[ble] enabled = false")]
    if ble.transport:
        return [skip("bluetooth", f"[ble] transport = {ble.transport!r}: Bumble drives that controller, "
                                  "not the system's BlueZ")]
    adapters = bluetooth_adapters(sysfs)
    if not adapters:
        why = "no Bluetooth adapter" + ("" if sysfs.is_dir() else f" ({sysfs} does not exist)")
        return [fail("bluetooth adapter", why, "plug one in, or on a Raspberry Pi remove `dtoverlay=disable-bt` "
                                               "from config.txt; or set [ble] enabled = false"),
                skip("bluetooth powered", "no adapter")]
    blocked = rfkill_blocked(adapters[0], sysfs)
    adapter = ok("bluetooth adapter", ", ".join(adapters))
    if blocked == "soft":
        return [adapter, fail("bluetooth powered", f"{adapters[0]} is blocked (rfkill)", "`sudo rfkill unblock bluetooth`")]
    if blocked == "hard":
        return [adapter, fail("bluetooth powered", f"{adapters[0]} is blocked by a hardware switch (rfkill)",
                              "turn the radio on with its switch")]
    code, out = tool(["bluetoothctl", "show"])
    if code is None and "not installed" in out:
        return [adapter, skip("bluetooth powered", "bluetoothctl is not installed (apt install bluez)")]
    if code is None:
        return [adapter, fail("bluetooth powered", f"bluetoothd does not answer ({out})",
                              "`sudo systemctl enable --now bluetooth`")]
    powered = parse_powered(out)
    if powered is None:
        first = out.splitlines()[0] if out else f"exit {code}"
        return [adapter, fail("bluetooth powered", f"bluetoothctl shows no controller: {first}",
                              "`sudo systemctl restart bluetooth`")]
    if not powered:
        return [adapter, fail("bluetooth powered", f"{adapters[0]} is off", "`bluetoothctl power on`")]
    return [adapter, ok("bluetooth powered", f"{adapters[0]} is on")]


# -- serial ----------------------------------------------------------------------------------------


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def serial_checks(facts: Facts, *, expand: Callable[[str], list[str]] = glob.glob,
                  can_open: Callable[[str], bool] = lambda p: os.access(p, os.R_OK | os.W_OK)) -> list[Check]:
    """Which configured ports exist now, and whether this account may open them (the serial
    group, usually ``dialout``: os.access answers for this process's groups)."""
    patterns = facts.config.serial.ports
    name = "serial ports"
    if not patterns:
        return [skip(name, "[serial] ports is empty")]
    urls = [p for p in patterns if "://" in p]
    files = [p for p in patterns if "://" not in p]
    found: list[str] = []
    for pattern in files:
        found += [m for m in sorted(expand(pattern)) if m not in found]
    if not files:
        return [skip(name, f"only pyserial URLs ({', '.join(urls)}): nothing to check on this machine")]
    if not found:
        return [warn(name, f"no port matches {', '.join(files)} now (they are opened as they appear)",
                     "plug the sensor in, or fix [serial] ports (`ls /dev/serial/by-id/`)")]
    denied = []
    for path in found:
        if not can_open(path):
            try:
                st = os.stat(path)
                denied.append((path, st.st_gid, stat.S_IMODE(st.st_mode)))
            except OSError as e:
                denied.append((path, None, e.strerror or str(e)))
    if denied:
        path, gid, mode = denied[0]
        if gid is None:
            return [fail(name, f"{path}: {mode}", "fix [serial] ports")]
        group = _group_name(gid)
        return [fail(name, f"{_user_name()} cannot open {path} (group {group}, {mode:04o})"
                     + (f" and {len(denied) - 1} more" if len(denied) > 1 else ""),
                     f"`sudo usermod -aG {group} {_user_name()}`, then log in again (or restart the service)")]
    return [ok(name, f"{len(found)} port(s), all can be opened: {', '.join(found[:4])}"
               + (" ..." if len(found) > 4 else ""))]


# -- chain -----------------------------------------------------------------------------------------


def _journal_chain_ids(layout: DataDir) -> list[tuple[Path, int]]:
    """The chain each of the gateway's journals was written for: anchoring pauses on any other."""
    from gateway.proofs.journal import META
    from gateway.storage import read_json

    out = []
    for path in (layout.txjournal, layout.proofs / META):
        try:
            data = read_json(path) or {}
        except Exception:  # noqa: BLE001 - a corrupt journal is not this check's business
            continue
        if isinstance(data.get("chain_id"), int):
            out.append((path, data["chain_id"]))
    return out


def check_chain_rpc(facts: Facts) -> tuple[Check, Any]:
    """The RPC answers, with the chain the preset names and the journals were written for; the
    check and a Web3 for the checks after it (None when the chain cannot be used)."""
    from gateway.chain.sender import ChainError, resolve_network
    from web3 import Web3

    name = "chain rpc"
    spec = facts.config.chain.network
    try:
        net = resolve_network(spec)
    except ChainError as e:
        return fail(name, str(e), "[chain] network"), None
    w3 = Web3(Web3.HTTPProvider(net.rpc_url, request_kwargs={"timeout": facts.rpc_timeout},
                                exception_retry_configuration=None))
    try:
        chain_id = int(w3.eth.chain_id)
        block = int(w3.eth.block_number)
    except OSError as e:
        return fail(name, f"cannot reach {net.rpc_url}: {_short_error(e)}",
                    "check this machine's network, or [chain] network (iotex-mainnet, iotex-testnet or an RPC URL)"
                    ), None
    except Exception as e:  # noqa: BLE001 - anything that is not a JSON-RPC node
        return fail(name, f"{net.rpc_url} does not answer as a JSON-RPC node: {_short_error(e)}",
                    "[chain] network: an Ethereum JSON-RPC URL"), None
    if net.chain_id is not None and chain_id != net.chain_id:
        return fail(name, f"{net.rpc_url} is chain {chain_id}, not {net.name} ({net.chain_id})",
                    "[chain] network"), None
    for path, expected in _journal_chain_ids(facts.layout):
        if expected != chain_id:
            return fail(name, f"{net.rpc_url} is chain {chain_id}, but {path} was written for chain {expected}: "
                              "anchoring would pause",
                        f"[chain] network: an RPC of chain {expected} (the one this gateway anchors on)"), None
    label = net.name if net.name != net.rpc_url else "custom network"
    return ok(name, f"{net.rpc_url} ({label}): chain {chain_id}, block {block}"), w3


def _mode_note(path: Path) -> Check | None:
    """A passphrase file other accounts can read is a FAIL (group-readable is allowed: a service
    may read it through its group)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode & 0o007:
        return fail("node key", f"the passphrase file {path} is {mode:04o}: every account can read it",
                    f"chmod 600 {path}")
    return None


def check_node_key(facts: Facts) -> tuple[Check, str | None]:
    """The node key exists and unlocks with [chain] key_passphrase_file, as `w3gate run` will
    unlock it; the check and the key's address (when readable)."""
    from gateway.chain.keystore import KeystoreError, load_key, read_identity, read_passphrase_file

    name = "node key"
    path = facts.layout.node_key
    try:
        address = read_identity(path).address
    except KeystoreError as e:
        hint = "`w3gate key new --passphrase-file FILE` (or `w3gate key import`)" if e.reason == "missing" \
            else f"restore {path} from your backup"
        return fail(name, e.detail, hint), None
    source = facts.config.chain.key_passphrase_file
    if not source:
        return fail(name, f"{address}: [chain] key_passphrase_file is not set, so the gateway cannot unlock it",
                    "[chain] key_passphrase_file = the file holding the key's passphrase (first line)"), address
    passphrase_path = Path(source).expanduser()
    try:
        passphrase = read_passphrase_file(passphrase_path)
    except KeystoreError as e:
        return fail(name, e.detail, "[chain] key_passphrase_file (a file this account can read)"), address
    try:
        load_key(path, passphrase)
    except KeystoreError as e:
        if e.reason == "bad_passphrase":
            return fail(name, f"{address}: the passphrase in {passphrase_path} does not unlock {path}",
                        "[chain] key_passphrase_file: its first line must be the key's passphrase"), address
        return fail(name, e.detail, f"restore {path} from your backup"), address
    loose = _mode_note(passphrase_path)
    if loose is not None:
        return loose, address
    return ok(name, f"{address} unlocks with {passphrase_path}"), address


def check_funds(w3: Any, address: str) -> Check:
    name = "node key funds"
    try:
        balance = int(w3.eth.get_balance(address))
    except Exception as e:  # noqa: BLE001
        return fail(name, f"cannot read the balance: {_short_error(e)}", "check [chain] network")
    if balance <= 0:
        return warn(name, f"{address} has no funds: anchors and applets' transactions cannot be paid",
                    f"send IOTX to {address} (`w3gate chain status` shows what an anchor costs)")
    return ok(name, f"{balance / 1e18:.6f} on {address}")


def check_registry(w3: Any, registry: str, address: str | None) -> Check:
    """The registry is a contract and lets this gateway anchor (isGateway). Only the two calls:
    the registry's full history (gateway_state) needs a log scan from block 0, too slow here."""
    from web3 import Web3

    from gateway.proofs.contract import artifact

    name = "chain registry"
    try:
        checksum = Web3.to_checksum_address(registry)
        if not bytes(w3.eth.get_code(checksum)):
            return fail(name, f"no contract at {registry} on this chain",
                        "[chain] registry (`w3gate chain deploy-registry` makes one)")
        if address is None:
            return skip(name, f"{registry} is a contract; whether this gateway may anchor needs the node key")
        allowed = w3.eth.contract(address=checksum, abi=artifact()["abi"]).functions.isGateway(address).call()
    except Exception as e:  # noqa: BLE001
        return fail(name, f"cannot read {registry}: {_short_error(e)}", "[chain] registry: the ProofRegistry's address")
    if not allowed:
        return fail(name, f"{registry} does not let {address} anchor (isGateway is false)",
                    f"the registry's owner runs `w3gate chain add-gateway {address}`")
    return ok(name, f"{registry}: this gateway may anchor")


def chain_checks(facts: Facts) -> list[Check]:
    chain = facts.config.chain
    if not chain.enabled:
        return [skip("chain", "[chain] enabled = false")]
    rpc, w3 = check_chain_rpc(facts)
    key, address = check_node_key(facts)
    out = [rpc]
    if not chain.registry:
        out.append(skip("chain registry", "[chain] registry is empty: nothing is anchored"))
    elif w3 is None:
        out.append(skip("chain registry", "the chain cannot be used"))
    else:
        out.append(check_registry(w3, chain.registry, address))
    out.append(key)
    if address is None or w3 is None:
        out.append(skip("node key funds", "no node key" if address is None else "the chain cannot be used"))
    else:
        out.append(check_funds(w3, address))
    return out


# -- ports -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket from /proc/net/tcp{,6}."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    uid: int
    inode: int


def _proc_address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    # the kernel prints each 32-bit word in host order (little-endian on every Pi and PC)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_listeners(text: str) -> list[Listener]:
    """The LISTEN sockets (state 0A) of one /proc/net/tcp or tcp6 table."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":
            continue
        try:
            hexaddr, hexport = parts[1].split(":")
            out.append(Listener(_proc_address(hexaddr), int(hexport, 16), int(parts[7]), int(parts[9])))
        except ValueError:
            continue
    return out


def proc_listeners(proc: Path = Path("/proc/net")) -> list[Listener] | None:
    """Every listening TCP socket on this machine (its network namespace); None without /proc."""
    out, seen = [], False
    for table in ("tcp", "tcp6"):
        try:
            out += parse_listeners((proc / table).read_text())
            seen = True
        except OSError:
            continue
    return out if seen else None


def _wildcard(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_unspecified


def conflicts(held: ipaddress.IPv4Address | ipaddress.IPv6Address,
              wanted: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    """Would binding ``wanted`` (None: an address we could not resolve) fail beside ``held``?"""
    if wanted is None or _wildcard(held) or _wildcard(wanted):
        return True
    return held == wanted


def resolve_bind(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host == "localhost":
        return ipaddress.ip_address("127.0.0.1")
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return ipaddress.ip_address(info[0][4][0])
    except (OSError, ValueError, IndexError):
        return None


def socket_owner(inode: int, first: Sequence[int]) -> int | None:
    """The pid holding socket ``inode``: the ``first`` pids are looked at before all others."""
    target = f"socket:[{inode}]"
    pids = list(dict.fromkeys([*first, *(int(p) for p in os.listdir("/proc") if p.isdigit())]))
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def _process_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@dataclass(frozen=True)
class PortWanted:
    """A port the gateway (or its managed broker) will listen on, and whose it may rightly be."""

    label: str  # "event API", "broker local", ...
    host: str
    port: int
    owner_pid: int | None  # our process that may hold it
    owner: str  # "the running gateway", "the managed broker"
    setting: str  # what moves it elsewhere


def check_port(wanted: PortWanted, listeners: list[Listener] | None,
               owner_of: Callable[[int, Sequence[int]], int | None] = socket_owner) -> Check:
    name = f"port {wanted.label}"
    where = f"{wanted.host}:{wanted.port}"
    if listeners is None:
        return _bind_probe(wanted)
    bind = resolve_bind(wanted.host)
    held = [entry for entry in listeners if entry.port == wanted.port and conflicts(entry.address, bind)]
    if not held:
        return ok(name, f"{where} is free")
    ours = [wanted.owner_pid] if wanted.owner_pid else []
    strangers = []
    for entry in held:
        pid = owner_of(entry.inode, ours)
        if pid is not None and pid == wanted.owner_pid:
            continue
        if pid is None and wanted.owner_pid and _process_uid(wanted.owner_pid) == entry.uid:
            continue  # another account's process we cannot look into, with our process's uid: ours
        strangers.append((entry, pid))
    if not strangers:
        return ok(name, f"{where} is held by {wanted.owner} (pid {wanted.owner_pid})")
    entry, pid = strangers[0]
    if pid is None:
        who = f"a process of uid {entry.uid} this account cannot look into"
    else:
        who = f"pid {pid} ({cmdline(pid) or 'unknown'})"
    hint = f"stop it (`sudo ss -ltnp 'sport = :{wanted.port}'` names it), or move ours: {wanted.setting}"
    if pid is not None and "mosquitto" in cmdline(pid) and wanted.label.startswith("broker"):
        hint = ("the system's own mosquitto holds it: `sudo systemctl disable --now mosquitto`, then "
                f"`w3gate broker run`; or move ours: {wanted.setting}")
    return fail(name, f"{entry.address}:{wanted.port} is held by {who}, not {wanted.owner}", hint)


def _bind_probe(wanted: PortWanted) -> Check:
    """Without /proc: try to bind the port (as the gateway would, SO_REUSEADDR)."""
    name = f"port {wanted.label}"
    bind = resolve_bind(wanted.host)
    family = socket.AF_INET6 if isinstance(bind, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((str(bind) if bind else "0.0.0.0", wanted.port))
        return ok(name, f"{wanted.host}:{wanted.port} is free")
    except OSError as e:
        if wanted.owner_pid:
            return ok(name, f"{wanted.host}:{wanted.port} is in use; {wanted.owner} (pid {wanted.owner_pid}) runs")
        return fail(name, f"{wanted.host}:{wanted.port} cannot be bound: {e.strerror or e}",
                    f"stop what holds it, or move ours: {wanted.setting}")


def wanted_ports(facts: Facts) -> list[PortWanted]:
    config = facts.config
    out = []
    if config.api.enabled and config.api.port:
        out.append(PortWanted("event API", config.api.listen, config.api.port, facts.gateway_pid,
                              "the running gateway", "[api] port"))
    if config.dashboard.enabled and config.dashboard.port:
        out.append(PortWanted("dashboard", config.dashboard.listen, config.dashboard.port, facts.gateway_pid,
                              "the running gateway", "[dashboard] port"))
    if config.broker.managed:
        b = config.broker
        out.append(PortWanted("broker local", "127.0.0.1", b.local_port, facts.broker_pid, "the managed broker",
                              "[broker] local_port and [mqtt] port, then `w3gate broker setup`"))
        for label, port, key in (("broker devices", b.device_port, "device_port"),
                                 ("broker clients", b.client_port, "client_port")):
            if port:
                out.append(PortWanted(label, b.device_listen, port, facts.broker_pid, "the managed broker",
                                      f"[broker] {key}, then `w3gate broker setup`"))
    return out


def port_checks(facts: Facts) -> list[Check]:
    wanted = wanted_ports(facts)
    if not wanted:
        return [skip("ports", "no event API or dashboard port (port = 0 or disabled) and no managed broker")]
    listeners = proc_listeners()
    return [check_port(w, listeners) for w in wanted]


# -- the run ---------------------------------------------------------------------------------------

GROUPS: tuple[Callable[[Facts], list[Check]], ...] = (
    broker_checks, clock_checks, disk_checks, permission_checks, bluetooth_checks, serial_checks, chain_checks,
    port_checks)


def run_checks(config: Config, *, groups: Sequence[Callable[[Facts], list[Check]]] = GROUPS,
               facts: Facts | None = None) -> Report:
    """Every group side by side (each waits on a network, a tool or a disk), reported in order."""
    facts = facts or Facts.gather(config)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(guarded, group, facts) for group in groups]
        results = [f.result() for f in futures]
    return Report(tuple(check for result in results for check in result))
