"""`python -m lab up|status|drills|down`: what `make lab`, `make drills` and `make lab-down` run."""

import argparse
import sys

from lab.docker import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("command", choices=["up", "status", "drills", "down"])
    parser.add_argument("drills", nargs="*", help="drills to run (default: all)")
    args = parser.parse_args(argv)
    # Imported here so that `--help` and a bad command answer without Docker.
    from lab.topology import Lab

    lab = Lab()
    try:
        if args.command == "up":
            seconds = lab.up()
            print(lab.describe())
            print(f"Lab up in {seconds:.0f} s.")
        elif args.command == "status":
            print(lab.status())
        elif args.command == "down":
            lab.down()
            print("The lab is removed.")
        else:
            from lab.drills import run_drills

            results = run_drills(lab, args.drills)
            return 0 if all(result.passed for result in results) else 1
    except LabError as error:
        print(f"lab {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
