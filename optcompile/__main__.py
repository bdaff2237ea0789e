"""Command line: ``python -m optcompile build-native`` builds the native Adam ahead of time."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optcompile")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "build-native", help="compile the C++ (and CUDA, when available) Adam kernels now"
    )
    args = parser.parse_args(argv)
    if args.command == "build-native":
        from optcompile.lowering.backends import native_ops

        try:
            path = native_ops.build()
        except RuntimeError as err:
            print(err, file=sys.stderr)
            return 1
        print(f"optcompile: native kernels ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
