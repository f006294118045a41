# The w3gate BLE sensor service: what an emulated or real legacy sensor offers over GATT.
# Shared by the firmware (device_fw/ble.py), the bumble emulator (hardware/ble_sensor/) and the
# gateway's BLE bridge (gateway/ingest/ble.py). Plain strings, so MicroPython imports it too.
#
# The characteristics carry the same byte stream as the UART link (device_fw/frame.py: each
# frame 0x00 COBS(...) 0x00), cut into chunks of at most ATT MTU - 3 bytes. The receiver feeds
# every chunk to a Deframer, so a frame may span notifications and the default 23-byte MTU works.
#   DATA    notify, read   device -> gateway: READING, HELLO and CONFIG_ACK frames
#   CONFIG  write, write without response   gateway -> device: CONFIG frames
#   PROVISION  write   gateway -> an unprovisioned device: its identity and settings, once, as
#           0x00 COBS(JSON {"id", "key", "name", "period_ms", "sensors"}) 0x00 in chunks (there is
#           no key yet to MAC it with). Ignored once the device has an identity; an authenticated
#           CONFIG {"repl": true} makes it unprovisioned again (w3gate device pair --replace).
#           The key crosses the air in clear: pair within reach, in a quiet place.
# Advertising: flags 0x06, complete local name (the device's name, "w3-<first 4 id bytes hex>"
# unless configured), and SERVICE in the complete list of 128-bit service UUIDs.

SERVICE = "7a3e0001-5c2f-4b7a-9d0e-3b1f0c6e2a01"
DATA = "7a3e0002-5c2f-4b7a-9d0e-3b1f0c6e2a01"
CONFIG = "7a3e0003-5c2f-4b7a-9d0e-3b1f0c6e2a01"
PROVISION = "7a3e0004-5c2f-4b7a-9d0e-3b1f0c6e2a01"
DEFAULT_MTU = 23


def chunks(data, mtu=DEFAULT_MTU):
    # the pieces one write or notification can carry
    size = max(1, mtu - 3)
    return [data[i:i + size] for i in range(0, len(data), size)]
