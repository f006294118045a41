"""`w3gate doctor`'s own logic, without the parts it looks at: levels and their thresholds, the
line format, exit codes, and that a check never raises."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from gateway import doctor as d
from gateway.config import load_config
from gateway.doctor import Check, Facts, Level, Report


def config(tmp_path: Path, **sections):
    """The default configuration on ``tmp_path / "data"``, with ``section={key: value}`` replaced."""
    base = load_config(env={}, data_dir=tmp_path / "data")
    return dataclasses.replace(base, **{name: dataclasses.replace(getattr(base, name), **values)
                                        for name, values in sections.items()})


# -- lines, reports, exit codes -----------------------------------------------------------------------


def test_a_line_is_the_word_the_name_what_was_found_and_for_trouble_the_fix():
    assert d.ok("broker reachable", "127.0.0.1:1883 takes connections").line(20) == \
        "ok    broker reachable      127.0.0.1:1883 takes connections"
    assert d.fail("broker secured", "anonymous clients are let in", "`w3gate broker setup`").line(20) == \
        "FAIL  broker secured        anonymous clients are let in  -> fix: `w3gate broker setup`"
    assert d.warn("clock synchronised", "not synchronised", "`sudo timedatectl set-ntp true`").line(18) == \
        "WARN  clock synchronised  not synchronised  -> fix: `sudo timedatectl set-ntp true`"
    assert d.skip("bluetooth", "[ble] enabled = false").line(9) == "skip  bluetooth  [ble] enabled = false"
    assert Check("x", Level.OK, "fine", hint="never shown").line(1) == "ok    x  fine"


def test_the_exit_status_is_one_only_when_something_fails():
    fine = Report((d.ok("a", "fine"), d.skip("b", "off"), d.warn("c", "meh", "do this")))
    assert fine.exit_code == 0 and not fine.failed
    assert fine.lines()[-1] == "doctor passed: 0 FAIL, 1 WARN, 1 ok, 1 skip"
    broken = Report(fine.checks + (d.fail("d", "broken", "fix it"),))
    assert broken.exit_code == 1 and broken.lines()[-1] == "doctor FAILED: 1 FAIL, 1 WARN, 1 ok, 1 skip"
    assert Report(()).exit_code == 0


def test_the_lines_align_and_the_json_says_the_same():
    report = Report((d.ok("a", "fine"), d.fail("longer name", "broken", "fix it")))
    assert report.lines()[:2] == ["ok    a            fine", "FAIL  longer name  broken  -> fix: fix it"]
    assert report.to_dict() == {
        "ok": False, "exit": 1, "counts": {"ok": 1, "WARN": 0, "FAIL": 1, "skip": 0},
        "checks": [{"name": "a", "status": "ok", "found": "fine", "hint": ""},
                   {"name": "longer name", "status": "FAIL", "found": "broken", "hint": "fix it"}]}


def test_a_check_that_raises_is_a_fail_saying_so_and_the_others_still_run(tmp_path):
    def broken_checks(facts):
        raise RuntimeError("boom")

    def fine_checks(facts):
        return [d.ok("fine", "yes")]

    report = d.run_checks(config(tmp_path), groups=(broken_checks, fine_checks), facts=Facts(config(tmp_path)))
    assert [c.line(6) for c in report.checks] == [
        "FAIL  broken  could not check: RuntimeError: boom  -> fix: a bug in `w3gate doctor`: please report this line",
        "ok    fine    yes"]
    assert report.exit_code == 1


def test_facts_ignore_a_status_of_a_dead_gateway_and_a_pid_file_that_is_not_mosquitto(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir()
    (cfg.data_dir / "status.json").write_text('{"pid": 999999999, "time": 1}')
    (cfg.layout.broker.dir).mkdir()
    cfg.layout.broker.pid.write_text(f"{os.getpid()}\n")  # pytest, not mosquitto
    facts = Facts.gather(cfg)
    assert facts.gateway_pid is None and not facts.gateway_running and facts.broker_pid is None


# -- clock ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("median", "level"), [
    (0.0, Level.OK), (300.0, Level.OK), (300.1, Level.WARN), (-60.0, Level.OK), (-60.1, Level.WARN)])
def test_the_skew_warns_once_it_uses_half_of_the_window(median, level):
    assert d.skew_level(median, max_age_s=600, max_future_s=120) is level


def test_the_skew_is_the_median_of_recent_pebble_readings_only():
    docs = [{"trust": "gateway-attested", "rx": 100.0, "ts": 0},  # legacy: the gateway's own time
            *({"trust": "secure-element", "rx": 1000.0 + i, "ts": 1000 + i - skew} for i, skew in
              enumerate([2, 3, 4, 100, 1]))]
    assert d.median_skew(docs) == (3.0, 5)
    assert d.median_skew(docs, limit=2) == (2.5, 2)
    assert d.median_skew([{"trust": "secure-element", "rx": "x", "ts": 1}]) == (None, 0)


def test_the_clock_is_judged_by_timedatectl_else_by_the_kernel_else_skipped():
    def tool(answer):
        return lambda args: answer

    def kernel(answer):
        return lambda: answer

    check, synced = d.check_clock_synchronised(tool((0, "yes")), kernel((None, "")))
    assert synced is True and check.line(18) == "ok    clock synchronised  synchronised (timedatectl)"
    check, synced = d.check_clock_synchronised(tool((0, "no\n")), kernel((True, "")))
    assert synced is False and check.level is Level.WARN and "`sudo timedatectl set-ntp true`" in check.hint
    check, synced = d.check_clock_synchronised(
        tool((1, "System has not been booted with systemd as init system (PID 1). Can't operate.")),
        kernel((True, "kernel maximum error 0.2 s")))
    assert synced is True and check.found == ("synchronised (kernel maximum error 0.2 s; timedatectl: System has not "
                                              "been booted with systemd as init system (PID 1))")
    check, synced = d.check_clock_synchronised(tool((None, "timedatectl is not installed")),
                                               kernel((None, "adjtimex is not available")))
    assert synced is None and check.line(18) == ("skip  clock synchronised  cannot tell: timedatectl is not installed; "
                                                 "adjtimex is not available")


def test_the_kernel_answers_for_the_clock_here():
    synced, detail = d.kernel_synced()
    assert synced in (True, False) and detail.startswith("kernel maximum error ")


def _skew_facts(tmp_path, **status):
    cfg = config(tmp_path)
    cfg.layout.records.mkdir(parents=True)
    return Facts(cfg, status=status)


def test_the_skew_check_warns_and_names_the_fix_for_whose_clock_is_off(tmp_path):
    facts = _skew_facts(tmp_path)
    behind = [{"trust": "secure-element", "rx": 1000.0, "ts": 500}] * 3
    check = d.check_clock_skew(facts, True, records=lambda p: behind)
    assert check.line(10) == ("WARN  clock skew  median rx - ts +500.0 s over the last 3 Pebble readings (accepted: "
                              "-120 s .. +600 s)  -> fix: the devices' clocks are off (a Pebble sets its clock from "
                              "the LTE network), or widen [verify] max_age_s / max_future_s")
    check = d.check_clock_skew(facts, False, records=lambda p: behind)
    assert check.hint == "`sudo timedatectl set-ntp true`: this clock is not synchronised"
    fine = [{"trust": "secure-element", "rx": 1000.4, "ts": 1000}]
    assert d.check_clock_skew(facts, True, records=lambda p: fine).level is Level.OK


def test_many_clock_refusals_warn_even_when_the_accepted_readings_look_fine(tmp_path):
    facts = _skew_facts(tmp_path, rejected={"future": 40, "stale": 0}, accepted_total=60)
    fine = [{"trust": "secure-element", "rx": 1000.4, "ts": 1000}]
    check = d.check_clock_skew(facts, True, records=lambda p: fine)
    assert check.level is Level.WARN and check.found.endswith("; status: 0 stale and 40 future refused")
    check = d.check_clock_skew(facts, True, records=lambda p: [])
    assert check.level is Level.WARN and check.found.startswith("no Pebble readings in the buffer")
    quiet = _skew_facts(tmp_path / "q", rejected={"future": 1}, accepted_total=1000)
    assert d.check_clock_skew(quiet, True, records=lambda p: fine).level is Level.OK
    assert d.check_clock_skew(quiet, True, records=lambda p: []).level is Level.SKIP


def test_an_unreadable_buffer_is_a_warning_not_a_crash(tmp_path):
    def damaged(path):
        raise ValueError("not JSON")

    check = d.check_clock_skew(_skew_facts(tmp_path), True, records=damaged)
    assert check.level is Level.WARN and check.found == "cannot read the buffer: ValueError: not JSON"
    assert d.check_clock_skew(Facts(config(tmp_path / "none")), True).level is Level.SKIP


# -- disk -----------------------------------------------------------------------------------------------


MB = 1024 * 1024


@pytest.mark.parametrize(("free", "need", "level"), [
    (10_000 * MB, 1_000 * MB, Level.OK), (500 * MB, 1_000 * MB, Level.WARN), (63 * MB, 1_000 * MB, Level.FAIL),
    (63 * MB, 10 * MB, Level.OK)])
def test_disk_space_fails_only_when_nearly_full_and_warns_when_the_buffer_would_not_fit(free, need, level):
    assert d.disk_level(free, need) is level


@pytest.mark.parametrize(("free", "total", "need", "level"), [
    (100_000, 1_000_000, 3_000, Level.OK), (2_000, 1_000_000, 3_000, Level.WARN), (400, 1_000_000, 3_000, Level.FAIL),
    (0, 0, 3_000, Level.OK)])
def test_inodes_fail_when_almost_none_are_left_and_count_nothing_without_an_inode_table(free, total, need, level):
    assert d.inode_level(free, total, need) is level


def test_the_disk_check_measures_the_buffer_and_says_how_many_records_fit(tmp_path):
    cfg = config(tmp_path, buffer={"max_records": 10 ** 13})  # more than any disk holds
    space, inodes = d.disk_checks(Facts(cfg), stats=lambda p: (1000, 600_000))
    assert space.level is Level.WARN and "x 600 B measured" in space.found
    assert space.hint.startswith(f"free space on {tmp_path}, or lower [buffer] max_records to about ")
    assert inodes.level in (Level.OK, Level.WARN)
    small = config(tmp_path, buffer={"max_records": 1000})
    space, _ = d.disk_checks(Facts(small), stats=lambda p: (10, 100))  # too few to measure: the floor
    assert space.level is Level.OK and "(990 records x 1024 B assumed)" in space.found


# -- permissions ----------------------------------------------------------------------------------------


def test_a_private_file_open_to_others_fails_with_the_chmod_that_fixes_it(tmp_path):
    cfg = config(tmp_path)
    assert d.permission_checks(Facts(cfg))[0].level is Level.SKIP  # nothing there yet
    cfg.data_dir.mkdir(mode=0o700)
    key = cfg.layout.node_key
    key.write_text("{}")
    key.chmod(0o600)
    assert d.permission_checks(Facts(cfg))[0].level is Level.OK
    key.chmod(0o640)
    check = d.permission_checks(Facts(cfg))[0]
    assert check.line(20) == (f"FAIL  data dir permissions  {key}: 1 file open to other local accounts (0640, want "
                              f"0600): node-key.json  -> fix: chmod -R go= {key}")


# -- Bluetooth ------------------------------------------------------------------------------------------


def _adapter(tmp_path: Path, soft: str = "0", hard: str = "0") -> Path:
    sysfs = tmp_path / "bluetooth"
    rfkill = sysfs / "hci0" / "rfkill3"
    rfkill.mkdir(parents=True)
    (rfkill / "soft").write_text(soft + "\n")
    (rfkill / "hard").write_text(hard + "\n")
    return sysfs


def _ble_facts(tmp_path, **ble):
    return Facts(config(tmp_path, ble={"enabled": True, **ble}))


def test_bluetooth_is_skipped_when_off_or_driven_by_bumble(tmp_path):
    assert d.bluetooth_checks(Facts(config(tmp_path)))[0].line(9) == "skip  bluetooth  [ble] enabled = false"
    check = d.bluetooth_checks(_ble_facts(tmp_path, transport="usb:0"))[0]
    assert check.level is Level.SKIP and "Bumble" in check.found


def test_bluetooth_needs_an_adapter_unblocked_and_powered(tmp_path):
    facts = _ble_facts(tmp_path)
    powered = "Controller 00:11:22:33:44:55 (public)\n\tName: pi\n\tPowered: yes\n"
    missing = d.bluetooth_checks(facts, sysfs=tmp_path / "none", tool=lambda a: (0, powered))
    assert [c.level for c in missing] == [Level.FAIL, Level.SKIP] and "no Bluetooth adapter" in missing[0].found
    adapter, state = d.bluetooth_checks(facts, sysfs=_adapter(tmp_path / "a"), tool=lambda a: (0, powered))
    assert adapter.line(17) == "ok    bluetooth adapter  hci0" and state.line(17) == "ok    bluetooth powered  hci0 is on"
    _, state = d.bluetooth_checks(facts, sysfs=_adapter(tmp_path / "b", soft="1"), tool=lambda a: (0, powered))
    assert state.level is Level.FAIL and state.hint == "`sudo rfkill unblock bluetooth`"
    _, state = d.bluetooth_checks(facts, sysfs=_adapter(tmp_path / "c"),
                                  tool=lambda a: (0, powered.replace("yes", "no")))
    assert state.line(17) == "FAIL  bluetooth powered  hci0 is off  -> fix: `bluetoothctl power on`"
    _, state = d.bluetooth_checks(facts, sysfs=_adapter(tmp_path / "d"),
                                  tool=lambda a: (None, "bluetoothctl did not answer within 1.5 s"))
    assert state.level is Level.FAIL and state.hint == "`sudo systemctl enable --now bluetooth`"
    _, state = d.bluetooth_checks(facts, sysfs=_adapter(tmp_path / "e"),
                                  tool=lambda a: (None, "bluetoothctl is not installed"))
    assert state.level is Level.SKIP


# -- serial ---------------------------------------------------------------------------------------------


def _serial_facts(tmp_path, ports):
    return Facts(config(tmp_path, serial={"ports": ports}))


def test_serial_ports_that_this_account_cannot_open_fail_with_the_group_to_join(tmp_path):
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    facts = _serial_facts(tmp_path, [str(tmp_path / "ttyUSB*")])
    assert d.serial_checks(facts, can_open=lambda p: True)[0].level is Level.OK
    check = d.serial_checks(facts, can_open=lambda p: False)[0]
    group = d._group_name(port.stat().st_gid)
    assert check.level is Level.FAIL and check.found.startswith(f"{d._user_name()} cannot open {port} (group {group}, ")
    assert check.hint == f"`sudo usermod -aG {group} {d._user_name()}`, then log in again (or restart the service)"


def test_serial_ports_missing_warn_urls_are_skipped_and_none_configured_skips(tmp_path):
    assert d.serial_checks(_serial_facts(tmp_path, []))[0].level is Level.SKIP
    assert d.serial_checks(_serial_facts(tmp_path, ["socket://127.0.0.1:7000"]))[0].level is Level.SKIP
    check = d.serial_checks(_serial_facts(tmp_path, [str(tmp_path / "none*")]))[0]
    assert check.level is Level.WARN and "fix [serial] ports" in check.hint


# -- ports ----------------------------------------------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B9 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 4242 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0 100 0 0 10 0
   2: 0100007F:22B9 0100007F:C350 01 00000000:00000000 00:00000000 00000000   998        0 0 1 0 20 4 30 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:22B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 98 1 0 100 0 0 10 0
"""


def test_listeners_are_read_from_proc_net_tcp():
    four = d.parse_listeners(TCP)
    assert four == [d.Listener(ipaddress.ip_address("127.0.0.1"), 8889, 998, 4242),
                    d.Listener(ipaddress.ip_address("0.0.0.0"), 22, 0, 17)]
    six = d.parse_listeners(TCP6)
    assert six == [d.Listener(ipaddress.ip_address("::"), 8888, 0, 99), d.Listener(ipaddress.ip_address("::1"), 8080, 0, 98)]


def test_a_bind_conflicts_with_a_wildcard_or_the_same_address():
    ip = ipaddress.ip_address
    assert d.conflicts(ip("0.0.0.0"), ip("127.0.0.1")) and d.conflicts(ip("::"), ip("127.0.0.1"))
    assert d.conflicts(ip("127.0.0.1"), ip("0.0.0.0")) and d.conflicts(ip("127.0.0.1"), ip("127.0.0.1"))
    assert not d.conflicts(ip("127.0.0.1"), ip("10.0.0.5")) and not d.conflicts(ip("::1"), ip("127.0.0.1"))
    assert d.conflicts(ip("10.0.0.5"), None)  # an address we could not resolve: assume the worst


def test_a_port_is_free_ours_or_a_strangers():
    api = d.PortWanted("event API", "127.0.0.1", 8889, 4000, "the running gateway", "[api] port")
    listeners = d.parse_listeners(TCP)
    assert d.check_port(dataclasses.replace(api, port=8890), listeners).line(14) == \
        "ok    port event API  127.0.0.1:8890 is free"
    assert d.check_port(api, listeners, owner_of=lambda inode, first: 4000).found == \
        "127.0.0.1:8889 is held by the running gateway (pid 4000)"
    stranger = d.check_port(api, listeners, owner_of=lambda inode, first: os.getpid())
    assert stranger.level is Level.FAIL and stranger.found.startswith(f"127.0.0.1:8889 is held by pid {os.getpid()} (")
    assert stranger.hint == "stop it (`sudo ss -ltnp 'sport = :8889'` names it), or move ours: [api] port"
    unseen = d.check_port(dataclasses.replace(api, owner_pid=None), listeners, owner_of=lambda inode, first: None)
    assert unseen.level is Level.FAIL and "a process of uid 998 this account cannot look into" in unseen.found


def test_the_ports_checked_follow_the_configuration(tmp_path):
    labels = [w.label for w in d.wanted_ports(Facts(config(tmp_path)))]
    assert labels == ["event API", "dashboard", "broker local", "broker devices", "broker clients"]
    off = config(tmp_path, api={"port": 0}, dashboard={"enabled": False}, broker={"managed": False})
    assert d.wanted_ports(Facts(off)) == [] and d.port_checks(Facts(off))[0].level is Level.SKIP
    some = config(tmp_path, dashboard={"port": 0}, broker={"device_port": 0, "client_port": 0})
    assert [w.label for w in d.wanted_ports(Facts(some))] == ["event API", "broker local"]


# -- broker and chain, without a broker or a chain -------------------------------------------------------


def test_an_unreachable_broker_names_the_command_that_starts_it(tmp_path):
    from rig.broker import free_port

    port = free_port()
    cfg = config(tmp_path, mqtt={"port": port}, broker={"local_port": port})
    checks = d.broker_checks(Facts(cfg))
    assert [c.name for c in checks] == ["broker reachable", "broker secured", "broker credentials", "broker files"]
    assert checks[0].level is Level.FAIL and checks[0].hint == "`w3gate broker setup`, then `w3gate broker run`"
    assert [c.level for c in checks[1:]] == [Level.SKIP, Level.SKIP, Level.FAIL]
    moved = config(tmp_path, mqtt={"port": port}, broker={"managed": False})
    assert d.broker_checks(Facts(moved))[0].hint.startswith("start your MQTT broker, or point [mqtt] host / port")


def test_the_chain_is_skipped_when_off_and_a_missing_key_names_the_command(tmp_path):
    assert d.chain_checks(Facts(config(tmp_path)))[0].line(5) == "skip  chain  [chain] enabled = false"
    check, address = d.check_node_key(Facts(config(tmp_path, chain={"enabled": True})))
    assert address is None and check.level is Level.FAIL
    assert check.hint == "`w3gate key new --passphrase-file FILE` (or `w3gate key import`)"


def test_a_node_key_needs_a_passphrase_file_only_its_owner_reads(tmp_path):
    from gateway.chain.keystore import new_key

    secret = tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o640)  # a service's group may read it
    cfg = config(tmp_path, chain={"enabled": True, "key_passphrase_file": str(secret)})
    address = new_key(cfg.layout.node_key, "correct horse battery staple", kdf="pbkdf2", iterations=2).address
    assert d.check_node_key(Facts(cfg)) == (d.ok("node key", f"{address} unlocks with {secret}"), address)
    secret.chmod(0o644)
    check, _ = d.check_node_key(Facts(cfg))
    assert check.level is Level.FAIL and check.hint == f"chmod 600 {secret}"
    unset = config(tmp_path, chain={"enabled": True})
    check, _ = d.check_node_key(Facts(unset))
    assert check.level is Level.FAIL and check.hint.startswith("[chain] key_passphrase_file")
