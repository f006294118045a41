"""w3gate as a systemd service (docs/service.md): the units grant what the configured sources need
and nothing more, pass `systemd-analyze verify`, and a staged install (`--root`) lays out the
account, the paths and the units as systemd will read them at first boot; sd_notify datagrams
reach a notify socket as systemd's would receive them."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import COMMAND_MODULES, main
from gateway.config import load_config
from gateway.layout import DataDir
from gateway.service import install as inst
from gateway.service import units
from gateway.service.notify import Notifier, NotifyError, socket_address
from gateway.service.units import BROKER_UNIT, GATEWAY_UNIT, Program, ServiceError

ANALYZE = shutil.which("systemd-analyze")
MOSQUITTO = shutil.which("mosquitto", path="/usr/sbin:/usr/bin")


def config(**env: str):
    """A configuration as the service reads it: the defaults, data in /var/lib/w3gate, then ``env``."""
    return load_config(None, env={"W3GATE_DATA_DIR": "/var/lib/w3gate", **env})


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in lines(text) if line.startswith(key + "=")]


def value(text: str, key: str) -> str:
    found = values(text, key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


PROGRAM = Program(("/opt/w3gate/bin/w3gate",), code_dirs=("/opt/w3gate",))

# -- what the units say ------------------------------------------------------------------------


def test_the_gateway_unit_is_a_watched_notify_service_hardened_without_devices():
    unit = units.gateway_unit(config(), PROGRAM)
    assert value(unit, "Type") == "notify" and value(unit, "NotifyAccess") == "main"
    assert value(unit, "ExecStart") == "/opt/w3gate/bin/w3gate run --config /etc/w3gate/w3gate.toml"
    # the device makes its own identity at its first start, never an image
    assert value(unit, "ExecStartPre") == ("/opt/w3gate/bin/w3gate key ensure --config /etc/w3gate/w3gate.toml "
                                           "--passphrase-file /var/lib/w3gate/node-key.pass")
    assert value(unit, "WatchdogSec") == "30s" and value(unit, "Restart") == "on-failure"
    assert value(unit, "User") == value(unit, "Group") == "w3gate"
    assert value(unit, "StateDirectory") == "w3gate" and value(unit, "StateDirectoryMode") == "0700"
    assert value(unit, "ConfigurationDirectory") == "w3gate"
    assert value(unit, "StandardOutput") == value(unit, "StandardError") == "journal"
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                      "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                      "SystemCallFilter": "@system-service", "RestrictSUIDSGID": "yes", "UMask": "0077",
                      "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK"}.items():
        assert value(unit, key) == want, key
    assert not values(unit, "SupplementaryGroups") and not values(unit, "DeviceAllow")
    assert not values(unit, "ReadWritePaths")  # /var/lib/w3gate is the StateDirectory, writable as such
    assert value(unit, "Wants") == BROKER_UNIT and BROKER_UNIT in value(unit, "After")


def test_serial_ports_bring_dialout_and_the_tty_classes_with_their_drivers_loaded_first():
    unit = units.gateway_unit(config(W3GATE_SERIAL_PORTS="/dev/serial/by-id/usb-*,/dev/ttyAMA0"), PROGRAM)
    assert value(unit, "SupplementaryGroups") == "dialout"
    assert not values(unit, "PrivateDevices") and value(unit, "DevicePolicy") == "closed"
    assert values(unit, "DeviceAllow") == ["char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw",
                                           "/dev/ttyAMA0 rw"]  # a glob is no path to allow
    for module in ("usbserial", "cdc_acm"):  # resolved at start: a driver loaded later would stay denied
        assert f"modprobe@{module}.service" in value(unit, "Wants").split()
        assert f"modprobe@{module}.service" in value(unit, "After").split()
    assert "AF_BLUETOOTH" not in value(unit, "RestrictAddressFamilies")


def test_a_serial_port_over_the_network_needs_no_device():
    unit = units.gateway_unit(config(W3GATE_SERIAL_PORTS="socket://127.0.0.1:7000,rfc2217://10.0.0.2:2217"), PROGRAM)
    assert value(unit, "PrivateDevices") == "yes" and not values(unit, "SupplementaryGroups")


@pytest.mark.parametrize(("transport", "group", "device", "family", "warns"), [
    ("", "bluetooth", None, "AF_BLUETOOTH", False),  # BlueZ over D-Bus: its policy admits group bluetooth
    ("usb:0", "plugdev", "char-usb_device rw", None, True),  # a Bumble dongle: its USB node, by a udev rule
    ("serial:/dev/ttyUSB0", "dialout", "char-ttyUSB rw", None, False),  # an HCI UART controller
    ("tcp-client:127.0.0.1:9000", None, None, None, False),  # a virtual radio: network only
])
def test_ble_brings_what_its_transport_needs(transport, group, device, family, warns):
    cfg = config(W3GATE_BLE_ENABLED="true", W3GATE_BLE_TRANSPORT=transport)
    unit = units.gateway_unit(cfg, PROGRAM)
    assert values(unit, "SupplementaryGroups") == ([group] if group else [])
    assert (device in values(unit, "DeviceAllow")) if device else "char-usb_device rw" not in values(unit, "DeviceAllow")
    families = value(unit, "RestrictAddressFamilies").split()
    assert ("AF_BLUETOOTH" in families) == (family is not None)
    if group:  # a radio on this machine: its devices only
        assert value(unit, "DevicePolicy") == "closed" and not values(unit, "PrivateDevices")
    else:  # a virtual radio over the network needs no device at all
        assert value(unit, "PrivateDevices") == "yes" and not values(unit, "DeviceAllow")
    assert bool(units.needs(cfg).warnings) == warns


def test_the_broker_unit_runs_the_managed_configuration_before_the_gateway():
    cfg = config()
    unit = units.broker_unit(cfg, PROGRAM)
    conf = DataDir(Path("/var/lib/w3gate")).broker.conf
    assert value(unit, "ExecStart") == f"/usr/sbin/mosquitto -c {conf}"
    assert value(unit, "ExecStartPre") == "/opt/w3gate/bin/w3gate broker setup --config /etc/w3gate/w3gate.toml"
    assert value(unit, "Type") == "notify"  # Debian's mosquitto speaks sd_notify: ready means listening
    assert value(unit, "Before") == GATEWAY_UNIT and value(unit, "Conflicts") == "mosquitto.service"
    assert value(unit, "User") == "w3gate" and value(unit, "PrivateDevices") == "yes"
    assert int(value(unit, "LimitNOFILE")) > 3 * cfg.broker.max_connections
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet", "SystemCallFilter"):
        assert values(unit, key), key
    unmanaged = units.units(config(W3GATE_BROKER_MANAGED="false"), PROGRAM)
    assert list(unmanaged) == [GATEWAY_UNIT] and not values(unmanaged[GATEWAY_UNIT], "Wants")


def test_a_data_dir_elsewhere_is_writable_and_a_relative_one_refused():
    unit = units.gateway_unit(config(W3GATE_DATA_DIR="/srv/w3 data"), PROGRAM)
    assert value(unit, "ReadWritePaths") == '"/srv/w3 data"'
    assert value(unit, "WorkingDirectory") == '"/srv/w3 data"'
    with pytest.raises(ServiceError, match="relative"):
        units.gateway_unit(config(W3GATE_DATA_DIR="./w3gate-data"), PROGRAM)


def test_code_under_home_is_bound_read_only_and_the_rest_of_home_hidden():
    program = Program(("/home/pi/venv/bin/w3gate",), code_dirs=("/home/pi/venv", "/home/pi/w3gate"))
    for unit in units.units(config(), program).values():
        assert value(unit, "ProtectHome") == "tmpfs"
        assert value(unit, "BindReadOnlyPaths") == "/home/pi/venv /home/pi/w3gate"
    assert units.current_program("/home/pi/venv/bin/w3gate").code_dirs == ("/home/pi/venv",)


def test_exec_arguments_are_quoted_as_systemd_reads_them():
    assert units.exec_arg("/opt/w3gate/bin/w3gate") == "/opt/w3gate/bin/w3gate"
    assert units.exec_arg("/srv/my data") == '"/srv/my data"'
    assert units.exec_arg("/srv/100%") == "/srv/100%%"  # a specifier otherwise
    assert units.exec_arg("/srv/$x") == "/srv/$$x"  # a variable otherwise
    assert units.exec_arg('/a "b"') == '"/a \\"b\\""'


# -- systemd-analyze ---------------------------------------------------------------------------

VARIANTS = {
    "plain": {},
    "serial+bluez": {"W3GATE_SERIAL_PORTS": "/dev/serial/by-id/usb-*", "W3GATE_BLE_ENABLED": "true"},
    "usb-dongle, data elsewhere": {"W3GATE_BLE_ENABLED": "true", "W3GATE_BLE_TRANSPORT": "usb:0",
                                   "W3GATE_DATA_DIR": "/srv/w3gate"},
}


def _analyze_or_skip() -> str:
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed: verify needs the broker unit's ExecStart to exist")
    return ANALYZE


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_systemd_analyze_verify_passes_without_a_word(variant, tmp_path):
    """Real paths (this venv's w3gate, the installed mosquitto): verify checks that they run."""
    analyze = _analyze_or_skip()
    program = units.current_program()
    assert os.access(program.w3gate[0], os.X_OK)
    for name, text in units.units(config(**VARIANTS[variant]), program).items():
        (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / n) for n in (GATEWAY_UNIT, BROKER_UNIT))],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # an unknown or misspelt directive is only a warning (exit 0): none may appear
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", [GATEWAY_UNIT, BROKER_UNIT])
def test_systemd_rates_the_units_exposure_ok(name, tmp_path):
    """`systemd-analyze security`: below 3.0 of 10 ("OK"; measured 2.1 and 1.7). Offline mode
    needs systemd 250 or newer."""
    analyze = _analyze_or_skip()
    for unit_name, text in units.units(config(W3GATE_SERIAL_PORTS="/dev/ttyUSB0"), units.current_program()).items():
        (tmp_path / unit_name).write_text(text)
    probe = subprocess.run([analyze, "security", "--help"], check=False, capture_output=True, text=True, timeout=30)
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250): it can only rate loaded units")
    result = subprocess.run([analyze, "security", "--offline=yes", "--threshold=30", str(tmp_path / name)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level" in result.stdout


# -- install / uninstall -----------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch):
    """`w3gate service ...` through the real command group (as if gateway/cli/__init__.py listed it)."""
    monkeypatch.setitem(COMMAND_MODULES, "service", "service")

    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(main, ["service", *args], input=input)
    return run


@pytest.fixture
def nothing_runs(monkeypatch):
    """A staged install must run no command (useradd, systemctl) on this machine."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0] if args else kwargs}")
    monkeypatch.setattr(inst.subprocess, "run", refuse)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_staging_root_lays_out_the_tree_and_runs_nothing(cli, tmp_path, nothing_runs):
    root = tmp_path / "root"
    result = cli("install", "--root", str(root), "--w3gate", "/opt/w3gate/bin/w3gate")
    assert result.exit_code == 0, result.output
    expected = {"etc/w3gate/w3gate.toml": 0o640, "var/lib/w3gate": 0o700,
                "etc/systemd/system/w3gate.service": 0o644, "etc/systemd/system/w3gate-broker.service": 0o644,
                "etc/sysusers.d/w3gate.conf": 0o644, "etc/tmpfiles.d/w3gate.conf": 0o644}
    for rel, mode in expected.items():
        assert _mode(root / rel) == mode, rel
    staged = load_config(root / "etc/w3gate/w3gate.toml", env={})
    assert staged.data_dir == Path("/var/lib/w3gate")
    assert staged.chain.key_passphrase_file == "/var/lib/w3gate/node-key.pass"  # made with the key at first start
    assert not (root / "var/lib/w3gate/node-key.json").exists()  # a staged image holds no identity
    unit = (root / "etc/systemd/system/w3gate.service").read_text()
    assert value(unit, "ExecStart") == "/opt/w3gate/bin/w3gate run --config /etc/w3gate/w3gate.toml"
    assert 'u w3gate - "w3gate edge node" /var/lib/w3gate /usr/sbin/nologin' in (root / "etc/sysusers.d/w3gate.conf").read_text()
    assert "d /var/lib/w3gate 0700 w3gate w3gate -" in (root / "etc/tmpfiles.d/w3gate.conf").read_text()
    printed = [line.removeprefix("would run: ") for line in result.output.splitlines() if line.startswith("would run: ")]
    assert printed == [
        (f"useradd --root {root} --system --user-group --home-dir /var/lib/w3gate --no-create-home "
         "--shell /usr/sbin/nologin --comment 'w3gate edge node' w3gate"),
        f"systemctl --root {root} disable mosquitto.service",
        f"systemctl --root {root} enable w3gate-broker.service w3gate.service"]


def test_install_never_overwrites_an_existing_config(cli, tmp_path, nothing_runs):
    root = tmp_path / "root"
    conf = root / "etc/w3gate/w3gate.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('data_dir = "/srv/gw"\n[serial]\nports = ["/dev/ttyACM0"]\n# mine\n')
    before = conf.read_bytes()
    for _ in range(2):
        result = cli("install", "--root", str(root), "--w3gate", "/opt/w3gate/bin/w3gate")
        assert result.exit_code == 0, result.output
        assert "kept" in result.output and conf.read_bytes() == before
    unit = (root / "etc/systemd/system/w3gate.service").read_text()  # rendered from that config
    assert value(unit, "ReadWritePaths") == "/srv/gw" and value(unit, "SupplementaryGroups") == "dialout"
    assert _mode(root / "srv/gw") == 0o700 and _mode(root / "var/lib/w3gate") == 0o700


def test_a_relative_data_dir_in_an_existing_config_stops_the_install_before_any_unit(cli, tmp_path, nothing_runs):
    root = tmp_path / "root"
    conf = root / "etc/w3gate/w3gate.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('data_dir = "./w3gate-data"\n')
    result = cli("install", "--root", str(root))
    assert result.exit_code == 1 and result.output.startswith("Error: service: data_dir 'w3gate-data' is relative")
    assert not (root / "etc/systemd").exists()


def test_dry_run_changes_nothing(cli, tmp_path, nothing_runs):
    root = tmp_path / "root"
    result = cli("install", "--root", str(root), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would write" in result.output and not root.exists()


def test_install_without_root_or_a_staging_dir_is_refused(cli, monkeypatch, nothing_runs):
    monkeypatch.setattr(inst.os, "geteuid", lambda: 1000)
    result = cli("install")
    assert result.exit_code == 1
    assert result.output.startswith("Error: not_root: installing a system service needs root")
    assert cli("uninstall").output.startswith("Error: not_root:")


def test_the_staged_tree_is_what_systemd_makes_right_at_first_boot(cli, tmp_path):
    """What the image build runs: systemd-sysusers and systemd-tmpfiles on the staged root make the
    account and give the data directory and the config their owner; the printed enable works offline."""
    tools = [shutil.which(t) for t in ("systemd-sysusers", "systemd-tmpfiles", "systemctl")]
    if None in tools:
        pytest.skip("systemd-sysusers, systemd-tmpfiles and systemctl are needed (apt-get install systemd)")
    root = tmp_path / "root"
    result = cli("install", "--root", str(root), "--w3gate", "/opt/w3gate/bin/w3gate")
    assert result.exit_code == 0, result.output
    subprocess.run([tools[0], f"--root={root}"], check=True, capture_output=True, timeout=60)
    subprocess.run([tools[1], f"--root={root}", "--create"], check=True, capture_output=True, timeout=60)
    entry = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("w3gate:"))
    uid, gid, home, shell = entry.split(":")[2], entry.split(":")[3], entry.split(":")[5], entry.split(":")[6]
    assert (home, shell) == ("/var/lib/w3gate", "/usr/sbin/nologin")
    data, conf = (root / "var/lib/w3gate").stat(), (root / "etc/w3gate/w3gate.toml").stat()
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (int(uid), int(gid), 0o700)
    assert (conf.st_uid, conf.st_gid, stat.S_IMODE(conf.st_mode)) == (0, int(gid), 0o640)
    enable = subprocess.run([tools[2], "--root", str(root), "enable", BROKER_UNIT, GATEWAY_UNIT],
                            check=False, capture_output=True, text=True, timeout=60)
    assert enable.returncode == 0, enable.stderr
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [BROKER_UNIT, GATEWAY_UNIT]


def test_uninstall_keeps_config_and_data_unless_purged(cli, tmp_path, nothing_runs):
    root = tmp_path / "root"
    assert cli("install", "--root", str(root)).exit_code == 0
    (root / "var/lib/w3gate/node-key.json").write_text("{}")
    result = cli("uninstall", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert f"would run: systemctl --root {root} disable w3gate.service w3gate-broker.service" in result.output
    for rel in ("etc/systemd/system/w3gate.service", "etc/systemd/system/w3gate-broker.service",
                "etc/sysusers.d/w3gate.conf", "etc/tmpfiles.d/w3gate.conf"):
        assert not (root / rel).exists(), rel
    assert (root / "etc/w3gate/w3gate.toml").exists() and (root / "var/lib/w3gate/node-key.json").exists()
    refused = cli("uninstall", "--root", str(root), "--purge-data")  # no terminal to ask, no --yes
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert (root / "var/lib/w3gate/node-key.json").exists()
    purged = cli("uninstall", "--root", str(root), "--purge-data", "--yes")
    assert purged.exit_code == 0, purged.output
    assert not (root / "var/lib/w3gate").exists() and not (root / "etc/w3gate").exists()


def test_status_says_why_it_cannot_tell(cli, monkeypatch, tmp_path):
    real_is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda p: False if str(p) == "/run/systemd/system" else real_is_dir(p))
    result = cli("status")
    assert result.exit_code == 3  # not running, as systemctl status says
    assert "systemd is not running on this machine" in result.output
    assert "w3gate.service" in result.output and "w3gate-broker.service" in result.output


# -- sd_notify ---------------------------------------------------------------------------------

@pytest.fixture
def notify_socket():
    """systemd's end: an AF_UNIX datagram socket (a short path: sun_path holds 108 bytes)."""
    where = tempfile.mkdtemp(prefix="w3n-", dir="/tmp")
    path = os.path.join(where, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    shutil.rmtree(where, ignore_errors=True)


def test_ready_status_watchdog_and_stopping_arrive_as_systemd_reads_them(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.enabled and notifier.watchdog_enabled
    assert notifier.ready("running: 3 devices\nand more")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running: 3 devices and more"  # one line: a newline is a field
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("busy") and sock.recv(4096) == b"STATUS=busy"
    assert notifier.extend_timeout(90) and sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_an_abstract_notify_socket_is_reached_by_its_at_name():
    name = f"w3gate-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert socket_address("@" + name) == b"\0" + name.encode()
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        notifier.ready()
        notifier.watchdog()
        assert [sock.recv(64), sock.recv(64)] == [b"READY=1", b"WATCHDOG=1"]
    finally:
        sock.close()


def test_without_systemd_every_call_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.watchdog_enabled
    assert notifier.ready("x") is False and notifier.stopping() is False
    notifier.watchdog()  # nothing to ping, nothing raised


def test_the_watchdog_is_armed_only_for_the_process_systemd_named(notify_socket):
    path, sock = notify_socket
    child = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert child.enabled and not child.watchdog_enabled
    child.watchdog()
    sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        sock.recv(64)
    assert not Notifier({"NOTIFY_SOCKET": path}).watchdog_enabled  # no WatchdogSec=: no pings


def test_a_vanished_socket_never_stops_the_lifecycle_but_the_watchdog_says_so(tmp_path, caplog):
    gone = str(tmp_path / "gone")
    notifier = Notifier({"NOTIFY_SOCKET": gone, "WATCHDOG_USEC": "1000000"})
    assert notifier.ready() is False and notifier.stopping() is False  # logged, not raised
    with pytest.raises(NotifyError, match="cannot notify systemd"):
        notifier.watchdog()  # the housekeeping step shows "degraded   watchdog: ..."
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
