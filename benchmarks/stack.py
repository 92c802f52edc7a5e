"""The load-balanced stack under failure (:mod:`tests.harness.stack`): three replicas behind the repository's nginx
config, steady load over real photographs, one replica SIGKILLed and one SIGTERMed, both restarted; prints the
events and the table.

    python benchmarks/stack.py                                              # plain processes
    python benchmarks/stack.py --image localhost/ssdlite-detector:latest    # containers of the image (podman)

Needs nginx (Debian's ``nginx`` package) and, for ``--image``, podman prepared by ``shared/tools/containers-setup.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.samples import photo
from tests.harness.stack import Stack, failure_drill


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="detector-stack-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="run the replicas as podman containers of this image")
    parser.add_argument("--phase-seconds", type=float, default=8.0, help="load before and after (default: 8)")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections (default: 4)")
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)")
    args = parser.parse_args(argv)

    photos = [photo(name) for name in ("grace_hopper.jpg", "astronaut.png", "rocket.jpg", "coffee.png")]
    with _workdir(args.workdir) as workdir, Stack(workdir, image=args.image) as stack:
        report = failure_drill(stack, photos, phase_s=args.phase_seconds, concurrency=args.concurrency)
    for offset, what in report.events:
        print(f"{offset:7.1f} s  {what}")
    print()
    print(report.table())
    return 0 if report.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
