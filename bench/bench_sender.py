"""Benchmark: `studystream send` against a bare pynetdicom chunked send loop, both into dcmtk storescp.

    .venv/bin/python bench/bench_sender.py [--instances 400] [--size small] [--runs 3] [--in-flight 1,2,4]

storescp runs with +B (writes what it receives) and --max-pdu 131072, --fork for parallel associations,
TCP_NODELAY=1. Both senders send the same files. `send` is timed end to end in-process (scan, group,
associate, store, summary); the bare loop only associates and stores. Prints inst/s, the ratio against
the goal (>= 0.9x), and `send` throughput as studies in flight grow (same instances split into studies).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pynetdicom import AE, _config, evt
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scu import synth  # noqa: E402
from scu.cli import run as send_run  # noqa: E402
from scu.scan import read_instance  # noqa: E402

GOAL = 0.9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_storescp(out_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = ["/usr/bin/storescp", "-od", str(out_dir), "+B", "+xa", "--fork", "--max-pdu", "131072", str(port)]
    proc = subprocess.Popen(command, env={**os.environ, "TCP_NODELAY": "1"}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("storescp did not start")


def bare_loop(paths: list[Path], port: int, stalls: list[int]) -> float:
    """The reference: one association, one context per (SOP class, TS), chunked send of each file.

    Stock pynetdicom 3.0 sometimes loses a C-STORE-RSP to its own reactor thread and then waits for the
    DIMSE timeout (see scu/sender.py, _ParkedCheckpoint). Here that costs 5 s and a new association for
    the rest; such stalls are counted and reported, not hidden.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True
    started = time.monotonic()
    keys = {(i.sop_class_uid, i.transfer_syntax_uid) for i in map(read_instance, paths[:1])}
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 131072
    ae.dimse_timeout = 5
    for sop_class, syntax in keys:
        ae.add_requested_context(sop_class, syntax)

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    todo = list(paths)
    while todo:
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        assert assoc.is_established
        while todo:
            status = assoc.send_c_store(todo[0])
            if "Status" not in status:
                stalls.append(1)
                break
            assert status.Status == 0, hex(status.Status)
            todo.pop(0)
        if assoc.is_established:
            assoc.release()
    return time.monotonic() - started


def studystream_send(source: Path, port: int, in_flight: int) -> float:
    started = time.monotonic()
    quiet = Console(file=io.StringIO())
    code = send_run(
        [source],
        host="127.0.0.1",
        port=port,
        called_ae="STORESCP",
        calling_ae="BENCH",
        in_flight=in_flight,
        bars=False,
        out=quiet,
        err=quiet,
    )
    assert code == 0, "send failed"
    return time.monotonic() - started


def clear(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--size", choices=["small", "ct", "mr"], default="small")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", default="1,2,4")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-sender-"))
    received = work / "received"
    received.mkdir()
    proc, port = start_storescp(received)
    try:
        one_study = work / "one"
        paths = synth.write_studies(one_study, instances=args.instances, size=args.size, modality="CT", seed=1)
        bare, ours = [], []
        stalls: list[int] = []
        # Only runs of the bare loop without a stall count: a stall costs 5 s and would flatter `send`.
        attempts = 0
        while len(bare) < args.runs and attempts < 4 * args.runs:
            attempts += 1
            clear(received)
            before = len(stalls)
            elapsed = bare_loop(paths, port, stalls)
            if len(stalls) == before:
                bare.append(elapsed)
            clear(received)
            ours.append(studystream_send(one_study, port, 1))
        n = len(paths)
        bare_rate, our_rate = n / statistics.median(bare or [float("inf")]), n / statistics.median(ours)
        size_kb = paths[0].stat().st_size / 1e3
        print(f"{n} x {args.size} ({size_kb:.0f} kB) CT instances, 1 study, median of {args.runs}")
        stall_note = f"(clean runs only; {len(stalls)} stall(s) in {attempts} runs)"
        print(f"  bare pynetdicom chunked loop : {bare_rate:8.1f} inst/s {stall_note}")
        print(f"  studystream send             : {our_rate:8.1f} inst/s")
        ratio = our_rate / bare_rate
        print(f"  ratio {ratio:.2f}x (goal >= {GOAL}x): {'MET' if ratio >= GOAL else 'NOT MET'}")

        levels = [int(x) for x in args.in_flight.split(",")]
        studies = max(levels) * 2
        many = work / "many"
        per_study = max(1, args.instances // studies)
        synth.write_studies(many, studies=studies, instances=per_study, size=args.size, modality="CT", seed=2)
        total = studies * per_study
        shape = f"{studies} studies x {per_study} instances"
        print(f"studystream send, {shape}, by studies in flight (cores: {os.cpu_count()})")
        for level in levels:
            times = []
            for _ in range(args.runs):
                clear(received)
                times.append(studystream_send(many, port, level))
            print(f"  {level:2d} in flight : {total / statistics.median(times):8.1f} inst/s")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
