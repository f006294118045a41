"""The systemd units w3gate runs under: ``w3gate.service`` (the gateway) and
``w3gate-broker.service`` (the secured mosquitto of docs/broker.md), rendered from the
configuration and from where w3gate is installed.

What the configuration decides, so the unit grants no more than the gateway uses:

- **devices.** Neither serial ports nor BLE: ``PrivateDevices=yes`` (only /dev/null and friends).
  Serial ports: ``DevicePolicy=closed`` with the tty classes a sensor appears as (USB adapters,
  CDC-ACM boards, the Pi's UARTs) and group ``dialout``; the USB serial drivers are loaded before
  the gateway starts (``modprobe@``), because systemd resolves a device class when it starts the
  unit, and a class whose driver is not loaded yet would stay denied. BLE through BlueZ (transport
  ``""``): group ``bluetooth`` (BlueZ's D-Bus policy) and ``AF_BLUETOOTH``; through a Bumble USB
  dongle (``usb:N``): the USB device nodes and group ``plugdev``; through a UART controller
  (``serial:...``): the tty classes and ``dialout``.
- **where it writes**: ``/var/lib/w3gate`` is the unit's ``StateDirectory`` (made 0700, owned by
  the service user, by systemd); a ``data_dir`` elsewhere is added as ``ReadWritePaths``.
- **the broker unit** only when ``broker.managed``; it runs ``w3gate broker setup`` first (as the
  service user, so the CA, certificates and the gateway's secret are made on the device at first
  start, never in an image) and conflicts with Debian's own ``mosquitto.service`` (same port).

Everything else is fixed hardening: no capabilities, no new privileges, a read-only system,
``@system-service`` system calls, private /tmp, no access to /home (a w3gate installed in a
virtualenv under /home is bound in read-only), logs to journald. Each unit passes
``systemd-analyze verify`` (tests/unit/test_service_units.py).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gateway.config import Config
from gateway.errors import W3gateError

GATEWAY_UNIT = "w3gate.service"
BROKER_UNIT = "w3gate-broker.service"
DEBIAN_BROKER_UNIT = "mosquitto.service"  # Debian's mosquitto, on the same port as ours
SERVICE_USER = "w3gate"
CONFIG_PATH = PurePosixPath("/etc/w3gate/w3gate.toml")
STATE_DIR = PurePosixPath("/var/lib/w3gate")  # systemd's StateDirectory=w3gate; the user's home
STATE_NAME = "w3gate"
PASSPHRASE_PATH = STATE_DIR / "node-key.pass"  # made with the node key at first start
WATCHDOG_S = 30  # the gateway pings every second from its housekeeping; 30 s rides out a slow disk
START_TIMEOUT_S = 300  # opening a large buffer and unlocking the node key on a Pi Zero take a while
STOP_TIMEOUT_S = 90  # draining in-flight records, the applet batch, the anchorer's current step
BROKER_NOFILE = 8192  # three listeners of broker.max_connections (1000) each, beyond the default 1024

# /proc/devices names of the character devices a serial sensor shows up as.
TTY_CLASSES = ("ttyUSB", "ttyACM", "ttyAMA", "ttyS")
# Drivers whose device classes exist only once loaded (a USB adapter plugged in after boot).
TTY_MODULES = ("usbserial", "cdc_acm")
NETWORK_SERIAL = ("socket://", "rfc2217://")  # pyserial URLs that reach no local device
HOME_DIRS = ("/home", "/root", "/run/user")  # what ProtectHome= hides


class ServiceError(W3gateError):
    """The service cannot be set up as asked; the detail says what to do instead."""

    reason = "service"


@dataclass(frozen=True)
class Program:
    """How the target system runs w3gate and mosquitto: absolute paths as the target sees them,
    and the directories the installed code lives in (bound read-only when under /home)."""

    w3gate: tuple[str, ...]  # the command: the entry point, or (python, "-m", "gateway")
    mosquitto: str = "/usr/sbin/mosquitto"
    code_dirs: tuple[str, ...] = ()
    kill: str = "/bin/kill"  # Debian's own mosquitto.service reloads with it (usrmerge: /usr/bin/kill)


def current_program(w3gate: str | None = None) -> Program:
    """The w3gate this interpreter runs (its virtualenv's entry point), or ``w3gate`` as given
    (an image build installs for another root: the path as that system will see it)."""
    if w3gate:
        venv = str(PurePosixPath(w3gate).parent.parent)  # <venv>/bin/w3gate
        return Program((w3gate,), mosquitto=_which("mosquitto", "/usr/sbin/mosquitto"), code_dirs=(venv,))
    exe = shutil.which("w3gate", path=os.path.dirname(sys.executable))
    command = (os.path.abspath(exe),) if exe else (os.path.abspath(sys.executable), "-m", "gateway")
    import gateway

    # gateway/ and hardware/ (which the CLI imports) sit side by side: in the checkout or in site-packages
    dirs = {os.path.abspath(sys.prefix), str(Path(gateway.__file__).resolve().parent.parent)}
    return Program(command, mosquitto=_which("mosquitto", "/usr/sbin/mosquitto"), code_dirs=tuple(sorted(dirs)))


def _which(name: str, default: str) -> str:
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    return found or default


@dataclass(frozen=True)
class Needs:
    """What the configured sources need from the system."""

    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # DeviceAllow= specifiers
    families: tuple[str, ...] = ()  # beyond AF_UNIX AF_INET AF_INET6 AF_NETLINK
    modules: tuple[str, ...] = ()  # modprobe@ units to start first
    warnings: tuple[str, ...] = field(default=())

    @property
    def devices_needed(self) -> bool:
        return bool(self.groups or self.devices)


def needs(config: Config) -> Needs:
    """Groups, devices and socket families for the configured serial ports and BLE transport."""
    groups: list[str] = []
    devices: list[str] = []
    families: list[str] = []
    modules: list[str] = []
    warnings: list[str] = []

    def ttys() -> None:
        groups.append("dialout")
        devices.extend(f"char-{name} rw" for name in TTY_CLASSES)
        modules.extend(TTY_MODULES)

    local = [p for p in config.serial.ports if not p.startswith(NETWORK_SERIAL)]
    if local:
        ttys()
        devices.extend(f"{p} rw" for p in local if p.startswith("/dev/") and not any(c in p for c in "*?["))
    if config.ble.enabled:
        transport = config.ble.transport
        kind = transport.split(":", 1)[0]
        if not transport:  # BlueZ through bleak: D-Bus, allowed to the bluetooth group
            groups.append("bluetooth")
            families.append("AF_BLUETOOTH")
        elif kind in ("usb", "pyusb"):
            groups.append("plugdev")
            devices.append("char-usb_device rw")
            warnings.append(f"ble.transport {transport!r}: the dongle's USB device must be writable by group "
                            "plugdev (a udev rule, docs/service.md)")
        elif kind == "serial":
            ttys()
        elif kind == "hci-socket":
            families.append("AF_BLUETOOTH")
            warnings.append(f"ble.transport {transport!r} needs CAP_NET_ADMIN, which the unit does not grant: use "
                            "BlueZ (transport = \"\") or a USB dongle, or grant it in a drop-in (docs/service.md)")
        # tcp-client:, tcp-server:, udp:, ...: a virtual radio over the network, nothing more
    dedup = lambda items: tuple(dict.fromkeys(items))
    return Needs(dedup(groups), dedup(devices), dedup(families), dedup(modules), tuple(warnings))


def exec_arg(value: str) -> str:
    """One argument of an Exec*= line, quoted as systemd reads it (spaces, quotes, specifiers)."""
    value = value.replace("%", "%%").replace("$", "$$")
    if value and not any(c in value for c in " \t\"'\\;"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(*args: str) -> str:
    return " ".join(exec_arg(a) for a in args)


def _data_dir(config: Config) -> PurePosixPath:
    data = PurePosixPath(str(config.data_dir))
    if not data.is_absolute():
        raise ServiceError(f"data_dir {str(config.data_dir)!r} is relative: a service has no working directory "
                           f"of yours; set an absolute one, e.g. data_dir = \"{STATE_DIR}\"")
    return data


def _under_home(path: str) -> bool:
    return any(path == h or path.startswith(h + "/") for h in HOME_DIRS)


def _hardening(program: Program, data_dir: PurePosixPath, *, private_devices: bool) -> list[str]:
    """The sandbox both units share."""
    lines = ["NoNewPrivileges=yes", "ProtectSystem=strict"]
    if data_dir != STATE_DIR:
        lines.append(f"ReadWritePaths={exec_arg(str(data_dir))}")
    bound = [d for d in program.code_dirs if _under_home(d)]
    if bound:  # a virtualenv or checkout under /home: visible, read-only, and nothing else of /home
        lines += ["ProtectHome=tmpfs", "BindReadOnlyPaths=" + " ".join(exec_arg(d) for d in bound)]
    else:
        lines.append("ProtectHome=yes")
    lines += ["PrivateTmp=yes", "PrivateMounts=yes"]
    if private_devices:
        lines.append("PrivateDevices=yes")
    lines += ["ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
              "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible",
              "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes",
              "RemoveIPC=yes", "CapabilityBoundingSet=", "AmbientCapabilities=",
              "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM"]
    return lines


HEADER = ("# Written by `w3gate service install` (gateway/service/units.py), which rewrites it.\n"
          "# Local changes belong in a drop-in: systemctl edit {name}\n")


def gateway_unit(config: Config, program: Program, *, user: str = SERVICE_USER,
                 config_path: PurePosixPath = CONFIG_PATH) -> str:
    """w3gate.service: ``w3gate run`` with READY and watchdog over sd_notify, restarted on failure."""
    data_dir = _data_dir(config)
    need = needs(config)
    wants, after = [], ["network.target", "time-sync.target"]
    if config.broker.managed:
        wants.append(BROKER_UNIT)
        after.append(BROKER_UNIT)
    modprobe = [f"modprobe@{m}.service" for m in need.modules]
    wants += modprobe
    after += modprobe
    unit = ["[Unit]", "Description=w3gate edge node (W3bstream-compatible)"]
    if wants:
        unit.append("Wants=" + " ".join(wants))
    unit.append("After=" + " ".join(after))
    # the node key is made on the device, at the first start, never shipped in an image
    passphrase = config.chain.key_passphrase_file or str(PASSPHRASE_PATH)
    service = ["[Service]", "Type=notify", "NotifyAccess=main",
               "ExecStartPre=" + exec_line(*program.w3gate, "key", "ensure", "--config", str(config_path),
                                           "--passphrase-file", passphrase),
               "ExecStart=" + exec_line(*program.w3gate, "run", "--config", str(config_path)),
               f"Environment=W3GATE_CONFIG={exec_arg(str(config_path))}",
               f"WatchdogSec={WATCHDOG_S}s", f"TimeoutStartSec={START_TIMEOUT_S}s",
               f"TimeoutStopSec={STOP_TIMEOUT_S}s", "Restart=on-failure", "RestartSec=5s",
               f"User={user}", f"Group={user}"]
    if need.groups:
        service.append("SupplementaryGroups=" + " ".join(need.groups))
    service += ["UMask=0077", f"StateDirectory={STATE_NAME}", "StateDirectoryMode=0700",
                f"ConfigurationDirectory={STATE_NAME}", f"WorkingDirectory={exec_arg(str(data_dir))}",
                "StandardOutput=journal", "StandardError=journal", "SyslogIdentifier=w3gate"]
    service += _hardening(program, data_dir, private_devices=not need.devices_needed)
    if need.devices_needed:
        service.append("DevicePolicy=closed")
        service += [f"DeviceAllow={d}" for d in need.devices]
    service.append("RestrictAddressFamilies=" + " ".join(("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                           *need.families)))
    install = ["[Install]", "WantedBy=multi-user.target"]
    return HEADER.format(name=GATEWAY_UNIT) + "\n".join(unit + [""] + service + [""] + install) + "\n"


def broker_unit(config: Config, program: Program, *, user: str = SERVICE_USER,
                config_path: PurePosixPath = CONFIG_PATH) -> str:
    """w3gate-broker.service: mosquitto with the configuration ``w3gate broker setup`` writes
    (run first, as the service user), ready when mosquitto says so (it speaks sd_notify)."""
    data_dir = _data_dir(config)
    from gateway.layout import DataDir  # the broker's files are the layout's to name

    conf = DataDir(Path(str(data_dir))).broker.conf
    unit = ["[Unit]", "Description=mosquitto for w3gate (the secured broker w3gate writes)",
            "After=network.target", f"Before={GATEWAY_UNIT}", f"Conflicts={DEBIAN_BROKER_UNIT}"]
    service = ["[Service]", "Type=notify", "NotifyAccess=main",
               "ExecStartPre=" + exec_line(*program.w3gate, "broker", "setup", "--config", str(config_path)),
               "ExecStart=" + exec_line(program.mosquitto, "-c", str(conf)),
               "ExecReload=" + exec_arg(program.kill) + " -HUP $MAINPID",
               "Restart=on-failure", "RestartSec=2s", f"LimitNOFILE={BROKER_NOFILE}",
               f"User={user}", f"Group={user}", "UMask=0077",
               f"StateDirectory={STATE_NAME}", "StateDirectoryMode=0700", f"ConfigurationDirectory={STATE_NAME}",
               f"WorkingDirectory={exec_arg(str(data_dir))}",
               "StandardOutput=journal", "StandardError=journal", "SyslogIdentifier=w3gate-broker"]
    service += _hardening(program, data_dir, private_devices=True)
    service.append("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK")
    install = ["[Install]", "WantedBy=multi-user.target"]
    return HEADER.format(name=BROKER_UNIT) + "\n".join(unit + [""] + service + [""] + install) + "\n"


def units(config: Config, program: Program, *, user: str = SERVICE_USER,
          config_path: PurePosixPath = CONFIG_PATH) -> dict[str, str]:
    """Every unit file for this configuration, by name (the broker's only when it is managed)."""
    out = {GATEWAY_UNIT: gateway_unit(config, program, user=user, config_path=config_path)}
    if config.broker.managed:
        out[BROKER_UNIT] = broker_unit(config, program, user=user, config_path=config_path)
    return out


def sysusers(user: str = SERVICE_USER) -> str:
    """sysusers.d(5): the system user, made at boot by systemd-sysusers where useradd never ran
    (an image built with --root)."""
    return (f"# w3gate's service account (`w3gate service install`)\n"
            f"u {user} - \"w3gate edge node\" {STATE_DIR} /usr/sbin/nologin\n")


def tmpfiles(config: Config, user: str = SERVICE_USER, config_path: PurePosixPath = CONFIG_PATH) -> str:
    """tmpfiles.d(5): the data directory 0700 and the configuration readable by the service's
    group only, enforced at every boot (an image cannot chown to a user it does not have yet)."""
    lines = ["# w3gate's directories (`w3gate service install`)", f"d {STATE_DIR} 0700 {user} {user} -"]
    data_dir = _data_dir(config)
    if data_dir != STATE_DIR:
        lines.append(f"d {data_dir} 0700 {user} {user} -")
    lines.append(f"z {config_path} 0640 root {user} -")
    return "\n".join(lines) + "\n"
