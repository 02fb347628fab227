"""On-device kit: what this device and the target's runtime on it are, as one JSON line.

    python export/device_info.py --target jetson-orin-nano
    python export/device_info.py            # the device's own facts only

The runtime's provenance and fingerprint (as a latency table or a report records them), how it
times, why it cannot run here (or null), and the device's own facts: host name, and on a Jetson
the L4T release, JetPack, power mode and clocks (null where absent, never guessed). Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwprune.runtime import runtime_for  # noqa: E402
from hwprune.runtime.kit import answer, device_facts  # noqa: E402
from hwprune.targets import load_target  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="device profile, e.g. jetson-orin-nano (none: the device's facts only)")
    args = parser.parse_args(argv)

    def info() -> dict:
        if args.target is None:
            return {"device": device_facts(), "python": sys.version.split()[0]}
        runtime = runtime_for(load_target(args.target))
        reason = runtime.unavailable_reason()
        found = {"name": runtime.name, "method": runtime.method, "unavailable_reason": reason,
                 "provenance": runtime.provenance(), "device": device_facts(), "python": sys.version.split()[0]}
        if reason is None:
            found["fingerprint"] = runtime.fingerprint()
            found["measurement"] = runtime.measurement()
        return found

    return answer("device_info", info)

if __name__ == "__main__":
    sys.exit(main())
