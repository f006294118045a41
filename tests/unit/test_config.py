"""Configuration: built-in defaults, a TOML file over them, W3GATE_* variables over both."""
from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


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
    assert config.registry_path == tmp_path / "devices.json"


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
