"""Where one C-STORE's time goes in `studystream receive`: per-step timings, one association, fsync on.

    .venv/bin/python bench/profile_receiver.py [--instances 1000] [--pixel-bytes 10240] [--no-fsync]

storescu sends the set over one association to a receiver started in a child process with timers
wrapped around each step of the path from a C-STORE's command to its response (receive, the hand-off
to the store thread, identify, the durable commit and its parts, the way back to the loop, the
response, and the sender's turnaround before its next PDU). Prints p50/p90 per step, largest total
first. The timers cost a little themselves: read the rate next to `bench_receiver.py`'s, not instead.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STATS: defaultdict[str, list[float]] = defaultdict(list)
MARKS: dict[str, float] = {}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                STATS[name].append(time.perf_counter() - started)

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            STATS[name].append(time.perf_counter() - started)

    return timed


def _since(mark: str, name: str) -> None:
    if mark in MARKS:
        STATS[name].append(time.perf_counter() - MARKS.pop(mark))


def instrument() -> None:
    """Wrap the receiver's steps with timers (in the child process only)."""
    import scp.association as association
    import scp.cstore as cstore
    import scp.outbox as outbox
    import scp.pdu as pdu
    import scp.storage as storage

    store_instance = association.store_instance

    def timed_store_instance(*args: Any) -> Any:
        _since("submitted", "hand-off: loop -> store thread")
        try:
            return _timed("store step (thread)", store_instance)(*args)
        finally:
            MARKS["stored"] = time.perf_counter()

    association.store_instance = timed_store_instance
    c_store = association.Association.c_store

    async def timed_c_store(self: Any, message: Any) -> None:
        MARKS["submitted"] = time.perf_counter()
        _since("command", "receive: command start -> dataset complete")
        await c_store(self, message)

    association.Association.c_store = timed_c_store  # type: ignore[method-assign]
    send_command = association.Association.send_command

    async def timed_send(self: Any, *args: Any, **kwargs: Any) -> None:
        _since("stored", "hand-off: store thread -> loop")
        await _timed("response sent", send_command)(self, *args, **kwargs)
        MARKS["sent"] = time.perf_counter()

    association.Association.send_command = timed_send  # type: ignore[method-assign]
    command_fragment = association.Association.command_fragment

    async def timed_command(self: Any, *args: Any, **kwargs: Any) -> None:
        MARKS.setdefault("command", time.perf_counter())
        await command_fragment(self, *args, **kwargs)

    association.Association.command_fragment = timed_command  # type: ignore[method-assign]
    header = pdu.PduReader.header

    async def timed_header(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await header(self, *args, **kwargs)
        _since("sent", "sender turnaround: response -> next PDU")
        return result

    pdu.PduReader.header = timed_header  # type: ignore[method-assign]
    for name in ("identify", "commit_durably"):
        setattr(association, name, _timed(name, getattr(association, name)))
    for name in ("read_header", "instance_event", "check_identity"):
        setattr(cstore, name, _timed(f"  {name}", getattr(cstore, name)))
    association.Association.sink_for = _timed("stage the file (loop)", association.Association.sink_for)
    outbox.Outbox._commit_group = _timed("  outbox group commit", outbox.Outbox._commit_group)
    storage.InstanceStore._place = _timed(
        "  place: rename (+ dir fsync if not rolled forward)", storage.InstanceStore._place
    )
    fsync_path = storage.fsync_path

    def timed_fsync(path: Path, directory: bool = False) -> None:
        _timed("  directory fsync" if directory else "  file fsync", fsync_path)(path, directory)

    storage.fsync_path = timed_fsync


def report(out: Path) -> None:
    lines = [f"{'step (ms)':45} {'p50':>7} {'p90':>7} {'n':>6}"]
    for name, values in sorted(STATS.items(), key=lambda item: -sum(item[1])):
        ordered = sorted(values)
        n = len(ordered)
        lines.append(f"{name:45} {1000 * ordered[n // 2]:7.3f} {1000 * ordered[int(n * 0.9)]:7.3f} {n:6}")
    out.write_text("\n".join(lines) + "\n")


def serve(out: Path, receiver_args: list[str]) -> None:
    instrument()
    from scp.cli import receive

    atexit.register(report, out)  # the receiver stops gracefully on SIGTERM, then the process exits
    receive.main(receiver_args, standalone_mode=True)


def main(argv: list[str] | None = None) -> int:
    import bench_receiver as bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--pixel-bytes", type=int, default=10 * 1024)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args(argv)
    bench.require_broker()
    work = Path(tempfile.mkdtemp(prefix="profile-receiver-"))
    try:
        files = bench.make_set(work / "set", args.instances, args.pixel_bytes)
        port, timings = bench.free_port(), work / "timings.txt"
        env = bench.receiver_env(work / "state", fsync=not args.no_fsync)
        receiver = ["--port", str(port), "--storage-dir", str(work / "store"), "--log-level", "WARNING"]
        serve_argv = [sys.executable, __file__, "--serve", str(timings), *receiver]
        process = subprocess.Popen(serve_argv, cwd=bench.ROOT, env=env, stdout=subprocess.DEVNULL)
        try:
            bench.wait_listening(port, process)
            time.sleep(1.0)  # the publisher connects before timing
            elapsed = bench.send(port, files, 1, "STUDYSTREAM")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        print(f"{args.instances} x {args.pixel_bytes} B, one association, fsync {'off' if args.no_fsync else 'on'}: ")
        print(f"{args.instances / elapsed:.0f} inst/s with the timers\n")
        print(timings.read_text() if timings.exists() else "(no timings: the receiver did not stop cleanly)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(main())
