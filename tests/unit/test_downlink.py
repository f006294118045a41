"""Downlinks respect the Pebble's parser and its 256-byte MQTT buffer."""
from __future__ import annotations

import json

import pytest

from gateway.codec import downlink
from gateway.codec.downlink import DownlinkError


def test_config_uses_the_riverrock_keys_and_types():
    payload = json.loads(downlink.config(upload_period=60, data_channel=8183, precise_gps=True))
    assert payload == {"appName": "Riverrock", "upload_period": "60", "data_channel": 8183, "preciseGPS": True}


@pytest.mark.parametrize("kwargs", [{"upload_period": 5}, {"upload_period": 90000}, {"data_channel": 9000}])
def test_config_out_of_range_is_refused(kwargs):
    with pytest.raises(DownlinkError) as e:
        downlink.config(**kwargs)
    assert e.value.reason == "bad_config"


def test_status_answers_carry_the_proposer():
    assert json.loads(downlink.status(1, "0xabc")) == {"status": 1, "proposer": "0xabc"}


def test_downlinks_over_256_bytes_are_refused():
    with pytest.raises(DownlinkError) as e:
        downlink.firmware("Riverrock", "1.0.15", "https://example.com/" + "x" * 300)
    assert e.value.reason == "downlink_too_large"


def test_firmware_must_come_over_https():
    with pytest.raises(DownlinkError):
        downlink.firmware("Riverrock", "1.0.15", "http://example.com/app_update.bin")
