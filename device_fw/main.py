# Start the firmware. A board runs /main.py at boot (pairing writes one that imports
# device_fw.app); the unix port runs this module from the board's directory:
#   cd <dir with device.json> && MICROPYPATH=<repo root> micropython -m device_fw.main
from device_fw import app

app.main()
