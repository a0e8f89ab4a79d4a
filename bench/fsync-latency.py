#!/usr/bin/env python3
"""How long the disk under a folder takes to make appended data durable:
`fdatasync` after each write of SIZE bytes, as the gateway's SQLite writer
does after each group commit (a few pages for a create, about 4.6 MB for a
group of two 100-record ingest batches) and its audit journal after each
batch of entries. Prints p50 / p90 / max in milliseconds per size.

    bench/fsync-latency.py [FOLDER] [--rounds 60] [--sizes 40960,400000,4600000]

FOLDER defaults to TMPDIR or /tmp; put it where the database will live.
"""
import argparse, os, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("folder", nargs="?", default=os.environ.get("TMPDIR", "/tmp"))
ap.add_argument("--rounds", type=int, default=60)
ap.add_argument("--sizes", default="40960,400000,4600000")
args = ap.parse_args()

for size in (int(s) for s in args.sizes.split(",")):
    with tempfile.NamedTemporaryFile(dir=args.folder, prefix="nara-fsync.") as f:
        took = []
        for _ in range(args.rounds):
            os.write(f.fileno(), os.urandom(size))
            start = time.perf_counter()
            os.fdatasync(f.fileno())
            took.append((time.perf_counter() - start) * 1000)
        took.sort()
        p = lambda q: took[min(len(took) - 1, int(q * len(took)))]
        print(f"{size:>9} bytes: fdatasync p50 {p(0.5):.2f} ms, p90 {p(0.9):.2f} ms, max {took[-1]:.2f} ms")
