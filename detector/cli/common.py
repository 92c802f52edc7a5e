"""What every sub-command shares: exit statuses, the one-line error, argument validators and common options.

User errors never print a traceback: a :class:`~detector.errors.DetectorError` becomes ``detector: error: …`` on
stderr and exit status 1; bad arguments are argparse's usage message and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from detector import defaults
from detector.backends.base import BACKEND_NAMES
from detector.backends.selection import PRECISION_MODES

EXIT_OK: Literal[0] = 0
EXIT_FAILED: Literal[1] = 1  # a user error: a bad file, bad weights, a failed image
EXIT_USAGE: Literal[2] = 2  # bad arguments (argparse's own status)
EXIT_INTERRUPTED: Literal[130] = 130  # Ctrl-C, as shells report SIGINT

if TYPE_CHECKING:
    # What each command module's ``add_commands`` receives (argparse's public API returns this private class).
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def error(message: str) -> None:
    """Print one ``detector: error: …`` line on stderr."""
    print(f"detector: error: {message}", file=sys.stderr)


def log(message: str) -> None:
    """Progress and notes, on stderr (stdout holds the results)."""
    print(message, file=sys.stderr)


def _number(value: str, kind: type[int] | type[float], valid: Callable[[float], bool], requirement: str) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {value!r}") from None
    if not valid(number):
        raise argparse.ArgumentTypeError(f"{requirement}, got {value}")
    return number


def score(value: str) -> float:
    """argparse type: a number in [0, 1]."""
    return float(_number(value, float, lambda x: 0.0 <= x <= 1.0, "must be between 0 and 1"))


def positive_int(value: str) -> int:
    """argparse type: an integer ≥ 1."""
    return int(_number(value, int, lambda x: x >= 1, "must be at least 1"))


def non_negative_int(value: str) -> int:
    """argparse type: an integer ≥ 0."""
    return int(_number(value, int, lambda x: x >= 0, "must be at least 0"))


def positive_float(value: str) -> float:
    """argparse type: a number > 0."""
    return float(_number(value, float, lambda x: x > 0, "must be positive"))


def add_weights_option(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    """``--weights``: a built-in model's name or a weights file (default: the default built-in model)."""
    parser.add_argument(
        "--weights",
        metavar="NAME|FILE",
        help=f"a built-in model's name or a weights file (default: the built-in {defaults.MODEL!r} model){help_suffix}",
    )


def add_backend_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--backend``: the engine running the network, and ``--precision``: what ``auto`` may trade for speed."""
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKEND_NAMES),
        default=default,
        help="engine running the network; auto: the fastest that meets the accuracy bar here (default: %(default)s)",
    )
    add_precision_option(parser)


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision fast|exact``."""
    parser.add_argument(
        "--precision",
        choices=PRECISION_MODES,
        default="fast",
        help="fast: auto may run bf16/fp16/int8 engines that meet the accuracy bar; exact: fp32 engines only, "
        "equal to TF / TF.js (default: %(default)s)",
    )
