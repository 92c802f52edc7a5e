"""Soak: steady closed-loop load on the service for several minutes; its memory (RSS) must stay flat.

Clients post the test photos (one per request, some as two-image multipart) plus a share of bad uploads (corrupt,
wrong type) so the error paths run too. RSS is sampled every ``--interval`` seconds; the first sample after warm-up
is the baseline.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

from _service import Client, load_photos, rss_mib, running_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the baseline RSS sample")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between RSS samples")
    args = parser.parse_args()
    photos = load_photos()
    bad = [(b"\xff\xd8\xff" + b"\0" * 5000, "image/jpeg"), (photos[0][1][:2000], photos[0][2]), (b"hi", "text/plain")]
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    with running_service() as (url, pid):
        end = time.monotonic() + args.warmup + args.minutes * 60

        def client_loop(index: int) -> None:
            client = Client(url)
            counts: collections.Counter[int] = collections.Counter()
            i = index
            while time.monotonic() < end:
                i += 1
                if i % 10 == 0:
                    body, content_type = bad[i % len(bad)]
                else:
                    _, body, content_type = photos[i % len(photos)]
                status, _ = client.detect(body, content_type, "?score_threshold=0.3")
                counts[status] += 1
            client.close()
            with lock:
                statuses.update(counts)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        start = time.monotonic()
        time.sleep(args.warmup)
        samples = [(time.monotonic() - start, rss_mib(pid))]
        print(f"t={samples[0][0]:6.0f} s  RSS {samples[0][1]:7.1f} MiB (baseline, after warm-up)", flush=True)
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - start, rss_mib(pid)))
            print(f"t={samples[-1][0]:6.0f} s  RSS {samples[-1][1]:7.1f} MiB", flush=True)
        for t in threads:
            t.join()
    total = sum(statuses.values())
    first, last = samples[0][1], samples[-1][1]
    print(
        f"\nsoak: {args.minutes:g} min at concurrency {args.concurrency}, {total} requests, statuses {dict(statuses)}"
    )
    print(
        f"RSS start {first:.1f} MiB, end {last:.1f} MiB, max {max(r for _, r in samples):.1f} MiB, "
        f"change {last - first:+.1f} MiB ({(last - first) / first * 100:+.1f}%)"
    )


if __name__ == "__main__":
    main()
