"""Emulated BLE sensors for benches without radios: a virtual radio (``radio.py``: controllers
on one bumble LocalLink, each reachable as HCI over TCP) and a sensor (``peripheral.py``) that
speaks the w3gate GATT service and frame protocol, as the firmware does on a board."""
