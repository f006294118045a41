"""`python -m bench`: every benchmark, one after the other."""
from __future__ import annotations

import subprocess
import sys

for module, args in (("bench.buffer", ["--backlog", "1000000"]), ("bench.ingest", []), ("bench.applets", []),
                     ("bench.proofs", []), ("bench.serial_link", []), ("bench.dashboard", []),
                     ("bench.ble_link", []), ("bench.market", []), ("bench.buffer_encryption", [])):
    print(f"== {module} ==", flush=True)
    subprocess.run([sys.executable, "-m", module, *args, *sys.argv[1:]], check=True)
