"""Run the simulator standalone: `python -m tests.simulators --port 9001`."""

from __future__ import annotations

import argparse
import contextlib
import threading

from .server import Simulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.simulators", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    with Simulator(args.host, args.port) as sim:
        print(f"provider simulator on {sim.url}  (e.g. api_base={sim.url}/anthropic)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
