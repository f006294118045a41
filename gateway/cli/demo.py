"""``w3gate demo``: the whole data path on this machine (a private broker, a local chain, the
gateway, emulated Pebbles and legacy sensors), run by the development rig (rig/demo.py), which
loads only when the command runs."""
from __future__ import annotations

import click


@click.command()
@click.option("--devices", type=click.IntRange(1, 10000), default=12, show_default=True,
              help="Emulated Pebbles (firmware profiles mixed).")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Duty cycle speed-up: a 300 s upload period becomes 5 s.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--faults/--no-faults", default=True, show_default=True,
              help="Let some devices misbehave, to show the gateway refusing them.")
@click.option("--chain/--no-chain", default=None,
              help="Anchor records on a local chain (anvil) and prove them [default: when anvil is installed].")
@click.option("--sensors/--no-sensors", default=True, show_default=True,
              help="Run an emulated serial board and an emulated BLE sensor beside the Pebbles.")
@click.option("--pair/--no-pair", default=True, show_default=True,
              help="Pair them at start; with --no-pair the demo prints the two commands to run yourself.")
@click.option("--data-dir", type=click.Path(file_okay=False), default="w3gate-demo", show_default=True)
def demo(devices: int, time_scale: float, duration: float | None, faults: bool, chain: bool | None,
         sensors: bool, pair: bool, data_dir: str) -> None:
    """Run the whole data path on this machine and print live verified readings."""
    from rig import demo as rig_demo

    rig_demo.run(rig_demo.Options(devices=devices, time_scale=time_scale, duration=duration, faults=faults,
                                  chain=chain, sensors=sensors, pair=pair, data_dir=data_dir))


COMMANDS = [demo]
