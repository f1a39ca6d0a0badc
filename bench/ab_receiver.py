"""A/B of `studystream receive`: a git revision against the working tree, rounds alternating, medians compared.

    .venv/bin/python bench/ab_receiver.py [--base HEAD] [--rounds 6] [--instances 2000] [--pixel-bytes 10240]
                                          [--associations 1] [--no-fsync]

On this 2-core machine one run of the same code varies by ±15% from the next, more than most single
changes to the receive path gain: `bench_receiver.py` cannot tell them apart. Here both receivers run the
same set in turns (base, work, then work, base, ...) so drift in the machine falls on both, and the
ratio of the medians is printed. ``--base`` is checked out into a temporary worktree and run from there
(its modules first on ``sys.path``); the working tree is this checkout, uncommitted changes included.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_receiver as bench

ROOT = Path(__file__).resolve().parent.parent


def one_round(code: Path, files: list[Path], work: Path, associations: int, fsync: bool) -> float:
    """inst/s of the receiver whose code is under ``code``, storescu sending ``files``."""
    port = bench.free_port()
    env = bench.receiver_env(work / "state", fsync=fsync)
    env.update(PYTHONPATH=str(code), STUDYSTREAM_RECEIVER_DICOMWEB_PORT="0")
    command = [sys.executable, "-m", "app.cli", "receive", "--port", str(port), "--storage-dir", str(work / "store")]
    process = subprocess.Popen([*command, "--log-level", "WARNING"], cwd=code, env=env, stdout=subprocess.DEVNULL)
    try:
        bench.wait_listening(port, process)
        time.sleep(0.5)  # the publisher connects before timing
        elapsed = bench.send(port, files, associations, "STUDYSTREAM")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(work / "store", ignore_errors=True)
        shutil.rmtree(work / "state", ignore_errors=True)
    return len(files) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--pixel-bytes", type=int, default=10 * 1024)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args(argv)
    bench.require_broker()
    work = Path(tempfile.mkdtemp(prefix="ab-receiver-"))
    base_tree = work / "base"
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
        files = bench.make_set(work / "set", args.instances, args.pixel_bytes)
        rates: dict[str, list[float]] = {"base": [], "work": []}
        for round_ in range(args.rounds):
            for side in ("base", "work") if round_ % 2 == 0 else ("work", "base"):
                code = base_tree if side == "base" else ROOT
                rates[side].append(one_round(code, files, work, args.associations, not args.no_fsync))
        fsync = "off" if args.no_fsync else "on"
        print(
            f"{args.instances} x {args.pixel_bytes} B, {args.associations} association(s), fsync {fsync}, "
            f"{args.rounds} rounds each, base = {args.base}"
        )
        for side, values in rates.items():
            print(f"{side:5} median {statistics.median(values):6.0f} inst/s   rounds {[round(v) for v in values]}")
        ratio = statistics.median(rates["work"]) / statistics.median(rates["base"])
        print(f"work/base = {ratio:.3f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
