"""Run one simulator by hand: ``python -m tests.cloudsim linode|digitalocean|scaleway [--port N]``.

Prints the base URL to hand to the SDK, serves until Ctrl-C (or --duration), then prints the
ledger and any spec violations. Time runs ``--speed`` times faster than the wall clock, so
``--speed 60`` makes a 60 s provisioning take one second.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from . import SIMULATORS
from .clock import ScaledClock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cloudsim", description=__doc__.splitlines()[0])
    parser.add_argument("vendor", choices=sorted(SIMULATORS))
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--token", default=None, help="accept only this token (default: any)")
    parser.add_argument("--no-validate", action="store_true", help="skip spec checks")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many wall seconds")
    args = parser.parse_args(argv)

    sim = SIMULATORS[args.vendor](
        clock=ScaledClock(args.speed),
        port=args.port,
        token=args.token,
        validate=False if args.no_validate else None,
    )
    sim.start()
    print(sim.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait(args.duration)
    sim.stop()
    print(
        json.dumps(
            {
                "ledger": sim.ledger.summary(),
                "requests": len(sim.log),
                "violations": [str(v) for v in sim.violations],
            },
            indent=1,
            default=str,
        ),
        file=sys.stderr,
    )
    return 1 if sim.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
