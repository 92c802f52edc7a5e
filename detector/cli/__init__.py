"""The ``detector`` command line: one module per group of sub-commands, the shared plumbing in ``common``.

- :mod:`~detector.cli.detect`: ``detect``;
- :mod:`~detector.cli.models`: ``info``, ``install-models``, ``convert-tf``, ``export``, ``backends``;
- :mod:`~detector.cli.training`: ``evaluate``, ``train``, ``make-dataset``.

Each module's ``add_commands`` declares its parsers and sets ``run`` to the function doing the work, which returns
the exit status. User errors (bad files, bad weights, bad arguments) print one line and exit non-zero; they never
print a traceback. ``python -m detector.cli`` (what ``torchrun -m`` runs) is the same program.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence

from detector.cli import detect, models, training
from detector.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, error
from detector.errors import DetectorError


def build_parser() -> argparse.ArgumentParser:
    """The ``detector`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="detector", description="SSDLite-MobileNetV2 object detection.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (detect, models, training):
        group.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # Pillow warns about what it tolerates in a file (a corrupt EXIF block, a large image) in a Python
            # warning of two lines per file; each file gets our one line instead (an error, or nothing: it was read).
            warnings.filterwarnings("ignore", module=r"PIL\.")
            status: int = args.run(args)
        return status
    except DetectorError as exc:
        error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
