"""Receiver benchmark: storescu into (a) dcmtk storescp +B, (b) a bare pynetdicom chunked SCP, (c) the receiver.

    .venv/bin/python bench/bench_receiver.py [--big 400] [--small 2000] [--rounds 3] [--rss-instances 20000]

Side by side in one run, fsync on for (c) ((d) is the receiver without fsync, to show what durability
costs): inst/s, MB/s and peak RSS per receiver for 1 association in 1 process, 4 associations in 1 and
in 2 processes, and the ratios beside the goals: with one association c/a >= 0.25 on both sets and
c/b >= 2.5; with 4 associations in 2 processes c/a >= 0.2 on the 10 KB set. The receivers take turns
(a b c d, ``--rounds`` times) and each line is the median round, with the range of all rounds after it.

``--reference`` adds (e), ``bench/minimal_scp.py`` with fsync: the issue's reference design (fragments to
a temporary file, fsync, rename, response; nothing else), and (f), the same with the SHA-256 of each
dataset, run in the same rounds. e/b bounds what c/b can reach with fsync on this machine, f/b what it
can reach once the one per-byte cost of the receiver's own work is paid, and c/e is how close the
receiver comes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

BARE_SCP = """
import os, sys, tempfile
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
_config.STORE_RECV_CHUNKED_DATASET = True
out = sys.argv[2]; tempfile.tempdir = out
def store(event):
    os.replace(event.dataset_path, os.path.join(out, event.request.AffectedSOPInstanceUID + ".dcm"))
    return 0
ae = AE("BARE"); ae.maximum_pdu_size = 131072; ae.maximum_associations = 16
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, store)])
"""


def require_broker() -> None:
    """Exit unless the broker the receiver publishes to answers: without one its events only wait in the
    outbox (an outage, not the steady state these benches measure) and publish lag is not measurable."""
    from app.settings import Settings
    from infra.stack import kafka_healthy

    if not kafka_healthy(Settings()):
        sys.exit("no Kafka broker answers (start the local one: `studystream stack up`)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_set(directory: Path, count: int, pixel_bytes: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    side = int((pixel_bytes // 2) ** 0.5)
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(1).integers(0, 4000, size=(side, side), dtype=np.uint16).tobytes()
    files = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = "Bench^Patient", "BENCH", "CT", number
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        path = directory / f"{number:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for candidate in Path("/proc").iterdir():
        if candidate.name.isdigit():
            try:
                fields = (candidate / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.extend(tree_pids(int(candidate.name)))
    return pids


def rss_mb(pid: int) -> float:
    """Current resident memory of ``pid`` and its children, in MB."""
    total = 0
    for member in tree_pids(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def send(port: int, files: list[Path], associations: int, called_ae: str) -> float:
    groups = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", called_ae, "--max-pdu", "131072", "127.0.0.1", str(port), *map(str, group)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


ScpRun = tuple[subprocess.Popen[bytes], int, dict[str, str], str]


def receiver_env(state_dir: Path, processes: int = 1, *, fsync: bool = True) -> dict[str, str]:
    """The environment of a benchmarked `studystream receive`: a topic, state and metrics port of its own."""
    return {
        **DCMTK_ENV,  # TCP_NODELAY
        "STUDYSTREAM_TOPIC_RAW": f"bench.raw.{uuid.uuid4().hex[:8]}",
        "STUDYSTREAM_STATE_DIR": str(state_dir),
        "STUDYSTREAM_RECEIVER_METRICS_PORT": str(free_port()),
        "STUDYSTREAM_DICOM_HOST": "127.0.0.1",
        "STUDYSTREAM_RECEIVER_PROCESSES": str(processes),
        "STUDYSTREAM_RECEIVER_FSYNC": "true" if fsync else "false",
    }


def start_scp(kind: str, out: Path, associations: int, processes: int) -> ScpRun:
    """Start receiver ``kind`` writing under ``out``; returns (process, port, environment, called AE)."""
    port = free_port()
    env = dict(DCMTK_ENV)  # TCP_NODELAY for storescp too
    called = "STUDYSTREAM"
    if kind == "a":
        argv = ["/usr/bin/storescp", "+B", "--max-pdu", "131072", "-od", str(out)]
        argv += (["--fork"] if associations > 1 else []) + [str(port)]
        called = "ANY-SCP"
    elif kind == "b":
        argv = [sys.executable, "-c", BARE_SCP, str(port), str(out)]
    elif kind in "ef":  # the reference design, fsync on ((f): with the SHA-256 the receiver must compute)
        argv = [sys.executable, str(ROOT / "bench" / "minimal_scp.py"), str(port), str(out)]
        argv += ["--sha256"] if kind == "f" else []
        env["PYTHONPATH"] = str(ROOT)
    else:  # "c": the receiver; "d": the receiver without fsync (shows what durability costs)
        env = receiver_env(out / "state", processes, fsync=kind != "d")
        argv = [
            sys.executable,
            "-m",
            "scp.cli",
            "--port",
            str(port),
            "--storage-dir",
            str(out / "store"),
            "--log-level",
            "WARNING",
        ]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, process)
    time.sleep(1.0 if kind in "cd" else 0.2)  # let the publisher connect before timing
    return process, port, env, called


def stop_scp(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def run_one(kind: str, files: list[Path], associations: int, work: Path, processes: int) -> dict[str, float]:
    out = work / f"out-{kind}-{uuid.uuid4().hex[:6]}"
    out.mkdir(parents=True)
    process, port, env, called = start_scp(kind, out, associations, processes)
    try:
        base_rss = rss_mb(process.pid)
        elapsed = send(port, files, associations, called)
        peak = rss_mb(process.pid)
        published_after = float("nan")
        if kind in "cd":
            published_after = wait_published(env, processes, elapsed)
        size_mb = sum(path.stat().st_size for path in files) / 1e6
        return {
            "inst_s": len(files) / elapsed,
            "mb_s": size_mb / elapsed,
            "rss_mb": peak,
            "rss_base": base_rss,
            "published_s": published_after,
        }
    finally:
        stop_scp(process)
        shutil.rmtree(out, ignore_errors=True)


def rss_growth(total: int, work: Path) -> None:
    """The receiver's resident memory after 1,000 instances and as the count grows to ``total`` (goal: flat ±10%)."""
    files = make_set(work / "rss", total, 1024)
    out = work / "out-rss"
    out.mkdir(parents=True)
    process, port, env, called = start_scp("c", out, 1, 1)
    checkpoints = sorted({min(1000, total), *range(5000, total, 5000), total})
    try:
        sent = 0
        print(f"receiver RSS by instances received ({total} x ~1 KB, one association per 1,000):")
        readings: dict[int, float] = {}
        for checkpoint in checkpoints:
            for start in range(sent, checkpoint, 1000):
                send(port, files[start : min(start + 1000, checkpoint)], 1, called)
            sent = checkpoint
            wait_published(env, 1, 0.0)
            readings[checkpoint] = rss_mb(process.pid)
            print(f"  {checkpoint:>7} instances: RSS {readings[checkpoint]:7.1f} MB")
        first, last = readings[checkpoints[0]], readings[checkpoints[-1]]
        change = (last - first) / first
        verdict = "MET" if abs(change) <= 0.10 else "NOT MET"
        ratio = f"RSS {checkpoints[-1]} / {checkpoints[0]} = {last / first:.3f} ({change:+.1%})"
        print(f"  {ratio}; goal flat within ±10%: {verdict}")
    finally:
        stop_scp(process)
        shutil.rmtree(out, ignore_errors=True)


def wait_published(env: dict[str, str], processes: int, send_seconds: float) -> float:
    """Seconds after the last ack until every outbox is empty."""
    import orjson

    base = int(env["STUDYSTREAM_RECEIVER_METRICS_PORT"])
    started = time.perf_counter()
    while time.perf_counter() - started < 120:
        depth = 0
        for slot in range(processes):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{base + slot}/health", timeout=5) as response:
                    depth += int(orjson.loads(response.read())["outbox_depth"])
            except OSError:
                depth += 1
        if depth == 0:
            return time.perf_counter() - started
        time.sleep(0.1)
    return float("inf")


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median rate (the lower middle of an even count): one run of dcmtk varied 2x
    between runs on this machine, which alone moved c/a across its goal."""
    return sorted(runs, key=lambda run: run["inst_s"])[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=400, help="instances of ~0.5 MB")
    parser.add_argument("--small", type=int, default=2000, help="instances of ~10 KB")
    parser.add_argument(
        "--configs", nargs="*", default=["1x1", "4x1", "4x2"], help="associations x receiving processes of (c)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per receiver, interleaved a b c d a b c d ...; medians printed"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run (e) bench/minimal_scp.py with fsync, the least an asyncio SCP does, and (f) the same with "
        "SHA-256: e/b and f/b bound c/b",
    )
    parser.add_argument(
        "--rss-instances", type=int, default=0, help="also measure the receiver's RSS from 1,000 to this many instances"
    )
    args = parser.parse_args(argv)
    require_broker()
    round_count = max(1, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="bench-receiver-", dir=ROOT / "state" if (ROOT / "state").is_dir() else None))
    try:
        sets = {
            "0.5MB": make_set(work / "big", args.big, 512 * 1024),
            "10KB": make_set(work / "small", args.small, 10 * 1024),
        }
        print(
            f"{'set':6} {'assoc':>5} {'proc':>4} {'rcv':>3} {'inst/s':>8} {'MB/s':>7} {'RSS MB':>7} {'pub s':>6}"
            f"  {'range of ' + str(round_count) + ' rounds'}"
        )
        for config in args.configs:
            associations, processes = (int(part) for part in config.split("x"))
            for name, files in sets.items():
                if not files:
                    continue
                kinds = "abcdef" if args.reference else "abcd"
                rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
                for _ in range(round_count):
                    for kind in kinds:
                        rounds[kind].append(run_one(kind, files, associations, work, processes))
                results = {kind: median_round(runs) for kind, runs in rounds.items()}
                for kind, r in results.items():
                    spread = sorted(run["inst_s"] for run in rounds[kind])
                    print(
                        f"{name:6} {associations:>5} {processes if kind in 'cd' else '':>4} {kind:>3} "
                        f"{r['inst_s']:8.0f} {r['mb_s']:7.1f} {r['rss_mb']:7.0f} {r['published_s']:6.2f}"
                        f"  {spread[0]:.0f}-{spread[-1]:.0f}"
                    )
                cb = results["c"]["inst_s"] / results["b"]["inst_s"]
                ca = results["c"]["inst_s"] / results["a"]["inst_s"]
                db = results["d"]["inst_s"] / results["b"]["inst_s"]
                goals = []
                if associations == 1:
                    goals = [f"c/a >= 0.25: {verdict(ca >= 0.25)}", f"c/b >= 2.5: {verdict(cb >= 2.5)}"]
                elif processes >= 2 and name == "10KB":
                    goals = [f"c/a >= 0.2: {verdict(ca >= 0.2)}"]
                reference = ""
                if args.reference:
                    eb = results["e"]["inst_s"] / results["b"]["inst_s"]
                    fb = results["f"]["inst_s"] / results["b"]["inst_s"]
                    ce = results["c"]["inst_s"] / results["e"]["inst_s"]
                    reference = f"   (reference e/b = {eb:.2f}, with SHA-256 f/b = {fb:.2f}; c/e = {ce:.2f})"
                print(
                    f"{name:6} {associations:>5} {processes:>4}   c/a = {ca:.2f}   c/b = {cb:.2f}   "
                    f"{'   '.join(goals)}   (no-fsync d/b = {db:.2f}){reference}"
                )
        if args.rss_instances:
            rss_growth(args.rss_instances, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
