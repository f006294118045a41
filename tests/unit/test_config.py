"""Configuration: built-in defaults, a TOML file over them, W3GATE_* variables over both."""
from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.layout import DataDir


def test_defaults_need_no_file():
    config = load_config(env={})
    assert config.mqtt.port == 1883 and config.buffer.full_policy == "refuse"


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path):
    path = tmp_path / "w3gate.toml"
    path.write_text('data_dir = "/srv/w3gate"\n[mqtt]\nport = 1884\nhost = "broker.local"\n')
    config = load_config(path, env={"W3GATE_MQTT_PORT": "1999", "W3GATE_BUFFER_MAX_RECORDS": "5000"})
    assert config.mqtt.host == "broker.local"
    assert config.mqtt.port == 1999
    assert config.buffer.max_records == 5000
    assert str(config.data_dir) == "/srv/w3gate"


def test_data_dir_argument_wins(tmp_path):
    config = load_config(env={"W3GATE_DATA_DIR": "/nope"}, data_dir=tmp_path)
    assert config.data_dir == tmp_path
    assert config.layout == DataDir(tmp_path)


@pytest.mark.parametrize("text,message", [
    ("[mqtt]\nprot = 1\n", "unknown key mqtt.prot"),
    ("[mqtt]\nport = 'x'\n", "mqtt.port must be an integer"),
    ("[buffer]\nfull_policy = 'drop-newest'\n", "full_policy"),
    ("nonsense = 1\n", "unknown key 'nonsense'"),
    ("[mqtt\n", "config file"),
])
def test_bad_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="W3GATE_MQTT_PORT"):
        load_config(env={"W3GATE_MQTT_PORT": "many"})


def test_the_defaults_printed_by_the_cli_load_back_as_a_config_file(tmp_path):
    from click.testing import CliRunner

    from gateway.cli import main

    text = CliRunner().invoke(main, ["config", "--defaults"]).output
    path = tmp_path / "w3gate.toml"
    path.write_text(text)
    assert load_config(path, env={}) == load_config(env={})
    shown = CliRunner().invoke(main, ["config", "--config", str(path)], env={"W3GATE_MQTT_PORT": "1999"}).output
    assert '"port": 1999' in shown


def test_serial_port_patterns_come_as_a_list_from_the_file_or_comma_separated_from_the_environment(tmp_path):
    path = tmp_path / "w3gate.toml"
    path.write_text('[serial]\nports = ["/dev/serial/by-id/usb-*", "socket://127.0.0.1:7000"]\n')
    assert load_config(path, env={}).serial.ports == ["/dev/serial/by-id/usb-*", "socket://127.0.0.1:7000"]
    env = {"W3GATE_SERIAL_PORTS": "/dev/ttyUSB*, /dev/ttyACM*"}
    assert load_config(path, env=env).serial.ports == ["/dev/ttyUSB*", "/dev/ttyACM*"]
    path.write_text('[serial]\nports = "/dev/ttyUSB0"\n')
    with pytest.raises(ConfigError, match="serial.ports must be a list of strings"):
        load_config(path, env={})


# -- every value is checked when loaded --------------------------------------------------------------

def test_every_key_of_the_defaults_has_a_rule_and_its_default_passes_it():
    import tomllib

    from gateway.config import DEFAULTS_TOML, SETTINGS, check_value

    defaults = tomllib.loads(DEFAULTS_TOML)
    keys = {f"{k}.{sub}" if isinstance(v, dict) else k: value
            for k, v in defaults.items() for sub, value in (v.items() if isinstance(v, dict) else [(None, v)])}
    assert set(keys) == set(SETTINGS)
    for key, value in keys.items():
        assert check_value(key, value, "defaults") == value


# (file text, env var, env value, key named): each bad value, once from the file, once from the env
BAD_VALUES = [
    ("mqtt", "port", "-1", "0"), ("mqtt", "port", "65536", "99999"), ("mqtt", "port", "28831.7", "28831.7"),
    ("mqtt", "port", '"1883"', "1883x"), ("mqtt", "port", "true", "true"),
    ("mqtt", "keepalive", "-3", "-3"), ("mqtt", "keepalive", "0", "0"), ("mqtt", "keepalive", "1.5", "1.5"),
    ("mqtt", "host", '""', " "), ("mqtt", "client_id", '""', ""), ("mqtt", "host", "5", None),
    ("mqtt", "host", "\"a\\u0000b\"", None),
    ("mqtt", "reconnect_min_s", "0", "0"), ("mqtt", "reconnect_max_s", "-1", "-1"),
    ("mqtt", "reconnect_min_s", "nan", "nan"), ("mqtt", "reconnect_max_s", "inf", "inf"),
    ("verify", "max_payload", "-5", "-5"), ("verify", "max_payload", "0", "0"),
    ("verify", "max_age_s", "0", "0"), ("verify", "max_future_s", "-1", "-1"),
    ("verify", "nonce_memory", "0", "0"),
    ("buffer", "full_policy", '"drop-newest"', "drop-newest"), ("buffer", "full_policy", "1", None),
    ("buffer", "max_records", "0", "0"), ("buffer", "segment_records", "-1", "-1"),
    ("buffer", "retention_s", "-60", "-60"), ("buffer", "max_batch", "1e3", "1e3"),
    ("buffer", "commit_interval_s", "-0.1", "-0.1"),
    ("applets", "time_limit_s", "0", "0"), ("applets", "max_memory_pages", "70000", "70000"),
    ("applets", "recycle_events", "0", "0"), ("applets", "worker_memory_mb", "-1", "-1"),
    ("applets", "batch", "0", "0"),
    ("api", "enabled", '"maybe"', "maybe"), ("api", "enabled", "1", "2"), ("api", "port", "-1", "-1"),
    ("api", "port", "70000", "70000"), ("api", "listen", '""', ""), ("api", "max_event_bytes", "0", "0"),
    ("chain", "enabled", '"yes"', "y"), ("chain", "network", '"mainnet"', "ftp://x"),
    ("chain", "registry", '"0x1234"', "nothex"), ("chain", "confirmations", "0", "0"),
    ("chain", "resubmit_after_s", "0", "0"), ("chain", "batch_records", "0", "0"),
    ("chain", "batch_age_s", "-1", "-1"), ("chain", "poll_s", "0", "0"), ("chain", "key_passphrase_file", "1", None),
    ("serial", "ports", '"/dev/ttyUSB0"', None), ("serial", "ports", "[1, 2]", None),
    ("serial", "baudrate", "0", "0"), ("serial", "baudrate", "9600.5", "9600.5"), ("serial", "rescan_s", "0", "0"),
    ("ble", "enabled", '"maybe"', "maybe"), ("ble", "max_connections", "0", "0"), ("ble", "scan_s", "-5", "-5"),
    ("ble", "reconnect_max_s", "0", "0"), ("ble", "transport", "false", None),
    ("legacy", "rate", "0", "0"), ("legacy", "rate", "-1", "-inf"), ("legacy", "burst", "0", "0"),
    ("legacy", "burst", "2.5", "2.5"),
    ("log", "level", '"loud"', "loud"), ("log", "level", "10", "10"),
]


@pytest.mark.parametrize("section,key,toml_value,env_value", BAD_VALUES)
def test_a_bad_value_in_the_file_is_refused_naming_the_key_and_the_file(tmp_path, section, key, toml_value, env_value):
    path = tmp_path / "w3gate.toml"
    path.write_text(f"[{section}]\n{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    message = str(e.value)
    assert f"{section}.{key} must be" in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("section,key,toml_value,env_value",
                         [case for case in BAD_VALUES if case[3] is not None])
def test_a_bad_value_in_the_environment_is_refused_naming_the_variable(section, key, toml_value, env_value):
    name = f"W3GATE_{section}_{key}".upper()
    with pytest.raises(ConfigError) as e:
        load_config(env={name: env_value})
    message = str(e.value)
    assert f"environment variable {name}" in message and f"{section}.{key} must be" in message


@pytest.mark.parametrize("text", ["data_dir = 5\n", 'data_dir = ""\n'])
def test_a_bad_data_dir_is_refused(tmp_path, text):
    path = tmp_path / "w3gate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="data_dir must be"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="W3GATE_DATA_DIR"):
        load_config(env={"W3GATE_DATA_DIR": ""})


def test_environment_booleans_integers_and_numbers_are_parsed_strictly():
    for text, value in [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)]:
        assert load_config(env={"W3GATE_API_ENABLED": text}).api.enabled is value
    config = load_config(env={"W3GATE_MQTT_PORT": " 1884 ", "W3GATE_LEGACY_RATE": "12", "W3GATE_LOG_LEVEL": "DEBUG"})
    assert (config.mqtt.port, config.legacy.rate, config.log.level) == (1884, 12.0, "debug")


def test_good_edge_values_load(tmp_path):
    path = tmp_path / "w3gate.toml"
    path.write_text('[mqtt]\nport = 65535\nkeepalive = 1\nreconnect_min_s = 1\n[api]\nport = 0\n'
                    '[chain]\nnetwork = "http://127.0.0.1:8545"\nregistry = "0x' + "ab" * 20 + '"\nconfirmations = 1\n'
                    '[verify]\nmax_future_s = 0\n[buffer]\nfull_policy = "drop-anchored"\ncommit_interval_s = 0\n'
                    '[applets]\nmax_memory_pages = 65536\n[log]\nlevel = "warning"\n')
    config = load_config(path, env={})
    assert (config.mqtt.port, config.api.port, config.mqtt.reconnect_min_s) == (65535, 0, 1.0)
    assert isinstance(config.mqtt.reconnect_min_s, float)


def test_a_reconnect_minimum_above_the_maximum_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="W3GATE_MQTT_RECONNECT_MIN_S: mqtt.reconnect_min_s"):
        load_config(env={"W3GATE_MQTT_RECONNECT_MIN_S": "60"})


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"\xff\xfe[mqtt]"), "not UTF-8"),
    (lambda p: None, "does not exist"),
])
def test_an_unreadable_config_file_is_one_clear_error(tmp_path, make, message):
    path = tmp_path / "w3gate.toml"
    make(path)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_the_demo_configuration_loads(tmp_path):
    """The variables `./dev.sh demo` sets for its gateway (gateway/cli/demo.py)."""
    env = {"W3GATE_MQTT_HOST": "127.0.0.1", "W3GATE_MQTT_PORT": "41883", "W3GATE_DATA_DIR": str(tmp_path),
           "W3GATE_MQTT_CLIENT_ID": "w3gate-demo", "W3GATE_API_PORT": "0", "W3GATE_CHAIN_ENABLED": "true",
           "W3GATE_CHAIN_NETWORK": "http://127.0.0.1:8545", "W3GATE_CHAIN_REGISTRY": "0x" + "5f" * 20,
           "W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(tmp_path / "pass"), "W3GATE_CHAIN_CONFIRMATIONS": "1",
           "W3GATE_CHAIN_BATCH_RECORDS": "50", "W3GATE_CHAIN_BATCH_AGE_S": "5",
           "W3GATE_SERIAL_PORTS": str(tmp_path / "usb-*"), "W3GATE_BLE_ENABLED": "true",
           "W3GATE_BLE_TRANSPORT": "tcp-client:127.0.0.1:9000"}
    config = load_config(env=env)
    assert config.chain.enabled and config.ble.enabled and config.chain.batch_age_s == 5.0


def test_docs_configuration_lists_every_key_with_its_rule():
    from pathlib import Path

    from gateway.config import SETTINGS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for key, setting in SETTINGS.items():
        env = "W3GATE_" + key.replace(".", "_").upper()
        assert f"| `{key}` | `{env}` | {setting.describe()} |" in doc, key
