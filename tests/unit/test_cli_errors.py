"""Every bad invocation of `w3gate` ends with a readable error and a non-zero exit, never a
traceback: expected failures print `Error: ...` (exit 1, or click's 2 for usage), and a bug
prints one line pointing at the saved traceback (exit 70)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import EXIT_BUG, main

ROOT = Path(__file__).resolve().parents[2]
IMEI = "350916067070535"
ADDRESS = "0x7c6D376B125b43ea5ba5dd0F84E00a4f0c3ad63F"
OWNER = "0x4F3794b74F9d59C5773a7272295A6A3F0cCc972a"
INFINITY_G1 = '{"message":{"timestamp":Infinity},"signature":{"r":"00","s":"00"}}'


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A data dir with one registered device and one paired sensor, and files of every bad kind."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    runner = CliRunner()
    env = {"W3GATE_DATA_DIR": str(data), "XDG_STATE_HOME": str(root / "state")}
    for args in (["device", "add", IMEI, "--address", ADDRESS, "--owner", OWNER],):
        assert runner.invoke(main, args, env=env).exit_code == 0
    (root / "garbage.bin").write_bytes(os.urandom(64) + b"\x00\xff")
    (root / "empty").write_bytes(b"")
    (root / "text.txt").write_text("hello\n")
    (root / "not-a-list.json").write_text('{"imei": 1}')
    (root / "list-of-ints.json").write_text("[1, 2, 3]")
    (root / "missing-imei.json").write_text('[{"address": "0x00"}]')
    (root / "bad-devices.json").write_text('[{"imei": "abc", "address": "0xzz"}]')
    (root / "dir").mkdir()
    (root / "bad.toml").write_text("[mqtt\n")
    (root / "negative-port.toml").write_text("[mqtt]\nport = -1\n")
    (root / "no-applets.toml").write_text('name = "p"\n')
    (root / "weird.toml").write_text('name = 5\n[[applets]]\nname = "a"\nwasm = "/nonexistent.wasm"\n')
    (root / "proof-empty.json").write_text("{}")
    (root / "proof-garbage.json").write_text('{"record": 5, "path": "x"}')
    (root / "corrupt-data").mkdir()
    for name in ("devices.json", "legacy_devices.json", "status.json"):
        (root / "corrupt-data" / name).write_text("{not json")
    (root / "pass").write_text("correct horse battery staple\n")
    (root / "short-key.txt").write_text("abcd\n")
    (root / "bad-keystore.json").write_text('{"crypto": 1}')
    return root


@pytest.fixture(autouse=True)
def nothing_long_running_starts(monkeypatch):
    """A bad invocation that got through would start a gateway or a demo: make that a loud failure."""
    import gateway.node
    import rig.demo

    def refuse(*_args, **_kwargs):
        raise AssertionError("this invocation should have been refused before starting anything")

    monkeypatch.setattr(rig.demo, "run", refuse)
    monkeypatch.setattr(gateway.node, "Node", refuse)


def _env(work: Path, **extra: str) -> dict:
    return {"W3GATE_DATA_DIR": str(work / "data"), "W3GATE_MQTT_PORT": "1", "XDG_STATE_HOME": str(work / "state"),
            "W3GATE_CONFIG": None, **extra}


# (arguments, extra environment); {w} is the work directory
BAD = [
    # the command itself
    (["nope"], {}), (["--bogus"], {}), (["device"], {}), (["device", "nope"], {}), (["pebble", "nope"], {}),
    (["key", "nope"], {}), (["proof", "verify"], {}), (["run", "extra"], {}), (["status", "extra"], {}),
    # configuration
    (["config", "--config", "{w}/nonexistent.toml"], {}), (["config", "--config", "{w}/dir"], {}),
    (["config", "--config", "{w}/bad.toml"], {}), (["config", "--config", "{w}/negative-port.toml"], {}),
    (["config", "--config", "{w}/garbage.bin"], {}), (["config"], {"W3GATE_MQTT_PORT": "-1"}),
    (["config"], {"W3GATE_MQTT_KEEPALIVE": "-3"}), (["config"], {"W3GATE_LOG_LEVEL": "loud"}),
    (["config"], {"W3GATE_API_ENABLED": "maybe"}), (["config"], {"W3GATE_VERIFY_MAX_PAYLOAD": "-5"}),
    (["run", "--config", "{w}/negative-port.toml"], {}), (["run"], {"W3GATE_LOG_LEVEL": "loud"}),
    (["run"], {"W3GATE_MQTT_PORT": "28831.7"}), (["status"], {"W3GATE_DATA_DIR": ""}),
    (["run", "--config", "{w}/nonexistent.toml"], {}), (["device", "list"], {"W3GATE_CONFIG": "{w}/bad.toml"}),
    # data directories that are not
    (["status", "--data-dir", "{w}/nonexistent"], {}), (["device", "list", "--data-dir", "{w}/text.txt"], {}),
    (["device", "list", "--data-dir", "{w}/corrupt-data"], {}),
    (["device", "sensors", "--data-dir", "{w}/corrupt-data"], {}),
    (["device", "remove", IMEI, "--data-dir", "{w}/corrupt-data"], {}),
    (["status"], {"W3GATE_DATA_DIR": "{w}/text.txt"}),
    (["device", "add", IMEI, "--address", ADDRESS], {"W3GATE_DATA_DIR": "{w}/text.txt/sub"}),
    (["device", "add", IMEI, "--address", ADDRESS], {"W3GATE_DATA_DIR": "/proc/w3gate"}),
    # devices
    (["device", "add", "abc", "--address", ADDRESS], {}), (["device", "add", IMEI], {}),
    (["device", "add", IMEI, "--address", "0xZZ"], {}), (["device", "add", IMEI, "--address", ADDRESS], {}),
    (["device", "add", "123", "--public-key", "04zz"], {}), (["device", "add", "123", "--public-key", "04" + "00" * 64], {}),
    (["device", "add", "350916067070536", "--address", ADDRESS, "--owner", "nobody"], {}),
    (["device", "add", IMEI, "--address", ADDRESS, "--profile", "nope"], {}),
    (["device", "add", "", "--address", ADDRESS], {}), (["device", "add", "3" * 200, "--address", ADDRESS], {}),
    (["device", "import", "{w}/nonexistent.json"], {}), (["device", "import", "{w}/garbage.bin"], {}),
    (["device", "import", "{w}/not-a-list.json"], {}), (["device", "import", "{w}/list-of-ints.json"], {}),
    (["device", "import", "{w}/missing-imei.json"], {}), (["device", "import", "{w}/bad-devices.json"], {}),
    (["device", "import", "{w}/empty"], {}), (["device", "import", "{w}/dir"], {}),
    (["device", "remove", "999999999999999"], {}), (["device", "config", "999999999999999", "--period", "60"], {}),
    (["device", "config", IMEI, "--period", "abc"], {}), (["device", "config", IMEI, "--period", "5"], {}),
    (["device", "config", IMEI, "--channels", "-1"], {}), (["device", "config", IMEI, "--period", "60"], {}),
    (["device", "config", IMEI], {}),
    (["device", "firmware", IMEI, "--version", "1.0.15"], {}),
    (["device", "firmware", "999999999999999", "--version", "1.0.15", "--uri", "https://x/y.bin"], {}),
    (["device", "firmware", IMEI, "--version", "", "--uri", "ftp://x"], {}),
    (["device", "firmware", IMEI, "--version", "1" * 300, "--uri", "https://x/" + "y" * 300], {}),
    (["device", "pair"], {}), (["device", "pair", "--serial", "/dev/x"], {}),
    (["device", "pair", "--serial", "/dev/x", "--name", "n", "--period-ms", "abc"], {}),
    (["device", "set", "nobody", "--period-ms", "2000"], {}), (["device", "unpair", "nobody"], {}),
    # captured payloads
    (["pebble", "decode", "zz"], {}), (["pebble", "decode", ""], {}), (["pebble", "decode", "00"], {}),
    (["pebble", "decode", "0a0b0c0d"], {}), (["pebble", "decode", "ffffffffffffffffffff01"], {}),
    (["pebble", "decode", INFINITY_G1], {}), (["pebble", "decode", INFINITY_G1.replace("Infinity", "1e999")], {}),
    (["pebble", "decode", '{"message": 5}'], {}), (["pebble", "decode", "{"], {}), (["pebble", "decode", "[]"], {}),
    (["pebble", "decode", "{w}/garbage.bin"], {}), (["pebble", "decode", "{w}/empty"], {}),
    (["pebble", "decode", "{w}/dir"], {}), (["pebble", "decode", "00", "--kind", "nope"], {}),
    (["pebble", "decode", "0a00", "--kind", "confirm"], {}), (["pebble", "decode", "7b7d", "--kind", "json"], {}),
    (["pebble", "verify", "00"], {}), (["pebble", "verify", "00", "--address", ADDRESS], {}),
    (["pebble", "verify", "00", "--address", "0x12"], {}), (["pebble", "verify", "00", "--imei", "999"], {}),
    (["pebble", "verify", "00", "--imei", IMEI], {}), (["pebble", "verify", "00", "--address", ADDRESS, "--at", "x"], {}),
    (["pebble", "verify", INFINITY_G1, "--address", ADDRESS], {}),
    (["pebble", "verify", "00", "--public-key", "04zz"], {}),
    (["pebble", "verify", "00", "--address", ADDRESS, "--confirm", "--owner", "bad"], {}),
    (["pebble", "verify", "{w}/garbage.bin", "--address", ADDRESS, "--at", "nan"], {}),
    # records and proofs
    (["records", "--limit", "abc"], {}), (["records", "--data-dir", "{w}/text.txt"], {}),
    (["proof", "42"], {}), (["proof", "abc"], {}), (["proof", "show", "-5"], {}),
    (["proof", "verify", "{w}/nonexistent.json", "--rpc", "iotex-testnet", "--registry", ADDRESS], {}),
    (["proof", "verify", "{w}/garbage.bin", "--rpc", "iotex-testnet", "--registry", ADDRESS], {}),
    (["proof", "verify", "{w}/proof-empty.json", "--rpc", "nope", "--registry", ADDRESS], {}),
    (["proof", "verify", "{w}/proof-empty.json", "--rpc", "http://127.0.0.1:1", "--registry", ADDRESS], {}),
    (["proof", "verify", "{w}/proof-garbage.json", "--rpc", "http://127.0.0.1:1", "--registry", "0x12"], {}),
    (["proof", "verify", "{w}/proof-empty.json"], {}),
    # projects, applets, publishers
    (["project", "deploy", "{w}/nonexistent.toml"], {}), (["project", "deploy", "{w}/garbage.bin"], {}),
    (["project", "deploy", "{w}/bad.toml"], {}), (["project", "deploy", "{w}/no-applets.toml"], {}),
    (["project", "deploy", "{w}/weird.toml"], {}), (["project", "deploy", "{w}/dir"], {}),
    (["project", "deploy", "{w}/empty"], {}), (["project", "remove", "nope"], {}),
    (["project", "remove", "../../etc"], {}), (["applet", "logs", "nope"], {}), (["applet", "logs", "../x"], {}),
    (["applet", "logs", "nope", "--level", "loud"], {}), (["applet", "logs", "nope", "--limit", "x"], {}),
    (["publisher", "add", "nope", "k"], {}), (["publisher", "list", "nope"], {}),
    (["publisher", "remove", "nope", "k"], {}), (["publisher", "add", "../..", "k"], {}),
    # keys
    (["key", "show"], {}), (["key", "show", "--operator", "bad name!"], {}), (["key", "show", "--operator", "x"], {}),
    (["key", "new", "--passphrase-file", "{w}/nonexistent"], {}), (["key", "new", "--passphrase-file", "{w}/empty"], {}),
    (["key", "new", "--operator", "../x", "--passphrase-file", "{w}/pass"], {}),
    (["key", "import", "{w}/nonexistent"], {}), (["key", "import", "{w}/short-key.txt", "--passphrase-file", "{w}/pass"], {}),
    (["key", "import", "{w}/garbage.bin", "--passphrase-file", "{w}/pass"], {}),
    (["key", "import", "{w}/bad-keystore.json", "--passphrase-file", "{w}/pass"], {}),
    (["key", "import", "{w}/empty", "--passphrase-file", "{w}/pass"], {}),
    (["key", "new"], {}),  # a prompt with nothing to read
    # emulated devices, the demo
    (["sim", "pebble", "--count", "0"], {}), (["sim", "pebble", "--broker", "host:abc"], {}),
    (["sim", "pebble", "--broker", ":1"], {}), (["sim", "pebble", "--faults", "nonsense=2"], {}),
    (["sim", "pebble", "--faults", "bad_signature=abc"], {}), (["sim", "pebble", "--fleet-dir", "{w}/text.txt"], {}),
    (["sim", "pebble", "--time-scale", "0"], {}), (["sim", "pebble", "--broker", "127.0.0.1:1", "--count", "1",
                                                     "--fleet-dir", "{w}/fleet"], {}),
    (["sim", "pebble", "--broker", "127.0.0.1:99999"], {}),
    (["demo", "--devices", "0"], {}), (["demo", "--time-scale", "abc"], {}), (["demo", "--time-scale", "-1"], {}),
    (["demo", "--duration", "-5"], {}), (["demo", "--data-dir", "{w}/text.txt"], {}),
]


def _fill(value, work: Path):
    return value.replace("{w}", str(work)) if isinstance(value, str) else value


def invoke(work: Path, args: list[str], extra: dict | None = None):
    env = {k: _fill(v, work) for k, v in _env(work, **(extra or {})).items()}
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=work):  # a relative path an argument names lands here
        return runner.invoke(main, [_fill(a, work) for a in args], env=env, input="")


def assert_clean_error(result, args) -> None:
    assert isinstance(result.exception, (SystemExit, type(None))), (args, result.exception)
    assert result.exit_code not in (0, EXIT_BUG), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output, (args, result.output)
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    readable = last.startswith(("Error:", "invalid:", "cannot tell:", "INVALID")) or last == "Aborted!"
    assert readable or result.output.startswith("Usage:"), (args, result.output)  # a group's help


@pytest.mark.parametrize("args,extra", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_a_bad_invocation_is_one_readable_error_and_a_non_zero_exit(work, args, extra):
    assert_clean_error(invoke(work, args, extra), args)


def test_the_table_is_large():
    assert len(BAD) >= 100


WORDS = ["device", "add", "remove", "config", "firmware", "sensors", "set", "unpair", "pebble", "decode",
         "verify", "proof", "show", "key", "project", "deploy", "remove", "applet", "publisher", "list",
         "--json", "--address", "--public-key", "--owner", "--imei", "--period", "--channels", "--at",
         "--kind", "--operator", "--config", "--data-dir", "--profile", "--version", "--uri", "--limit",
         "--period-ms", "--sensors", "--replace", "-", "--", "0x", IMEI, ADDRESS, "00", "{", "nan", "-1",
         "1e999", "riverrock-1.0.14", "g1", "{w}/garbage.bin", "{w}/dir", "{w}/empty", "{w}/nonexistent"]
STARTS = [["device", "add"], ["device", "remove"], ["device", "config"], ["device", "firmware"], ["device", "set"],
          ["device", "unpair"], ["device", "import"], ["pebble", "decode"], ["pebble", "verify"], ["proof", "show"],
          ["key", "show"], ["project", "deploy"], ["project", "remove"], ["publisher", "add"], ["publisher", "list"],
          ["applet", "logs"], ["config"], ["status"]]


@settings(max_examples=int(os.environ.get("W3GATE_CLI_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from(STARTS),
       rest=st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=6))
def test_no_invocation_at_all_shows_a_traceback(work, start, rest):
    """Random arguments after a real command: whatever the verdict, never a traceback or a bug."""
    if start == ["applet", "logs"]:
        rest = [r for r in rest if r not in ("-f", "--follow")]
    args = start + [r for r in rest if "\x00" not in r]
    result = invoke(work, args)
    assert isinstance(result.exception, (SystemExit, type(None))), (args, result.exception)
    assert result.exit_code != EXIT_BUG, (args, result.output)
    assert "Traceback" not in result.output, (args, result.output)
    if result.exit_code != 0:
        assert result.output.strip(), args


def test_a_bug_is_one_line_pointing_at_its_saved_traceback(work, monkeypatch):
    import gateway.cli.status as status_cli

    def broken(*_a, **_k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(status_cli, "read_status", broken)
    result = invoke(work, ["status"])
    assert result.exit_code == EXIT_BUG and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "bug in w3gate" in line and "ZeroDivisionError: boom" in line
    saved = Path(line.rsplit("the traceback is in ", 1)[1])
    assert "Traceback" in saved.read_text() and str(work / "state") in str(saved)


# -- as a user runs it -------------------------------------------------------------------------------

W3GATE = ROOT / ".venv" / "bin" / "w3gate"


@pytest.mark.skipif(not W3GATE.exists(), reason="the venv's w3gate script is not installed")
@pytest.mark.parametrize("args,extra,code", [
    (["device", "remove", "999999999999999"], {}, 1),
    (["pebble", "decode", INFINITY_G1], {}, 1),
    (["config"], {"W3GATE_MQTT_PORT": "-1"}, 1),
    (["run", "--config", "{w}/negative-port.toml"], {}, 1),
    (["status", "--data-dir", "{w}/nonexistent"], {}, 1),
    (["device", "import", "{w}/garbage.bin"], {}, 1),
    (["proof", "abc"], {}, 2),
])
def test_the_installed_command_exits_non_zero_with_one_error_line(work, args, extra, code):
    env = {**os.environ, **{k: _fill(v, work) for k, v in _env(work, **extra).items() if v is not None}}
    env.pop("W3GATE_CONFIG", None)
    done = subprocess.run([str(W3GATE), *[_fill(a, work) for a in args]], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("Error:"), done.stderr


def test_a_valid_invocation_still_works(work, tmp_path):
    # its own data dir: the random invocations above may well have removed the shared one's device
    own = {"W3GATE_DATA_DIR": str(tmp_path / "data")}
    assert invoke(work, ["device", "add", IMEI, "--address", ADDRESS], own).exit_code == 0
    result = invoke(work, ["device", "list", "--json"], own)
    assert result.exit_code == 0 and json.loads(result.output)[0]["imei"] == IMEI
