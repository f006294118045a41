"""Local users read nothing: after `w3gate run` has taken readings, run applets and written its
status, with the usual umask of 022, every file under the data directory is 0600 and every
directory 0700; a data directory left open by an older version is closed at start, with a warning."""
from __future__ import annotations

import os
import stat

from tests.support.gateway import GatewayProcess, cli, sim
from tests.support.wat import assemble


def loose(root) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name, want in [*((d, 0o700) for d in dirnames), *((f, 0o600) for f in filenames)]:
            path = os.path.join(dirpath, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if not stat.S_ISLNK(os.lstat(path).st_mode) and mode & 0o077:
                found.append(f"{os.path.relpath(path, root)} {mode:o}")
    return found


def test_everything_the_gateway_writes_is_private_to_its_account(tmp_path, mosquitto, fleet):
    old = os.umask(0o022)
    try:
        gw = GatewayProcess(tmp_path, mosquitto.port)
        cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
        assemble("probe", tmp_path)
        project = tmp_path / "probe.toml"
        project.write_text('name = "probe"\n[events]\npebble = true\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                           '[[strategies]]\nevent = "PEBBLE_DATA"\napplet = "probe"\nhandler = "start"\n')
        cli("project", "deploy", str(project), data_dir=gw.data_dir)
        gw.data_dir.chmod(0o755)  # as an older w3gate left it
        gw.start()
        sim(mosquitto, fleet, "--messages", "2", "--time-scale", "100", "--period", "10")
        gw.wait_for(lambda s: s["applets"]["events"] >= 6, what="readings through the applet")
        gw.stop()
        assert loose(gw.data_dir) == []
        assert stat.S_IMODE(os.stat(gw.data_dir).st_mode) == 0o700
        assert "is 0755 (want 0700)" in gw.log_text() and "set to 0700" in gw.log_text()
    finally:
        os.umask(old)
