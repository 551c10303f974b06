"""``python -m spinexr.fuzz``: run a fuzz campaign; exit status 1 when it found a defect."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from spinexr.fuzz.campaign import TARGETS, Budget, Campaign
from spinexr.fuzz.report import markdown
from spinexr.fuzz.targets.decode import ADDRESS_SPACE_BYTES


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the campaign, print the table; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m spinexr.fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same inputs")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=Path("var/fuzz"), help="report folder")
    parser.add_argument(
        "--decode-memory-mb",
        type=int,
        default=ADDRESS_SPACE_BYTES // 2**20,
        help="address-space limit of the decode worker",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the node on the way out
    if args.inputs is None and args.minutes is None:
        args.inputs = 1000
    campaign = Campaign(
        out=args.out,
        seed=args.seed,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        budget=Budget(args.inputs, args.minutes),
        decode_limit=args.decode_memory_mb * 2**20,
        command=shlex.join(["python", "-m", "spinexr.fuzz", *(argv or sys.argv[1:])]),
    )
    doc = campaign.run()
    print(markdown(doc))
    return 1 if doc["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
