"""Builds prepared datasets ahead of time (e.g. once before a multi-host run on a shared data_dir).

    python -m fintrans.data.prepare --name=chars [--data_dir=DIR]
    python -m fintrans.data.prepare                # all datasets
"""
from __future__ import annotations

import argparse
import sys
import time

import fintrans.data as fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fintrans.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", choices=fd.names(), help="dataset to build (default: all)")
    parser.add_argument("--data_dir", default=None,
                        help=f"where to build (default: ${fd.storage.ENV_DATA_DIR} or {fd.storage.DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    for name in [args.name] if args.name else fd.names():
        start = time.perf_counter()
        path = fd.prepare_dataset(name, args.data_dir)
        print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
