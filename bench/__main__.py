"""`make bench`: the sender, receiver and aggregator benchmarks plus an end-to-end run, a markdown report
and PNG plots under ``bench/results/``, and every ratio printed beside its goal.

    .venv/bin/python -m bench            # quick sizes: the whole run takes well under 10 minutes
    .venv/bin/python -m bench --full     # the benchmarks' own default sizes (much longer)
    .venv/bin/python -m bench --only e2e,aggregator

Each component benchmark runs as its own process (its output is streamed and kept for the report);
the end-to-end run starts a private pipeline on the running stack (see bench/bench_e2e.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

QUICK_ARGS = {
    "sender": ["--instances", "200", "--runs", "2", "--in-flight", "1,2"],
    "receiver": ["--big", "80", "--small", "400"],
    "aggregator": ["--events", "5000", "--sizes", "10", "1000", "5000", "--timeout", "120"],
}
E2E_QUICK = {"studies": 20, "series": 2, "instances": 10}
E2E_FULL = {"studies": 40, "series": 2, "instances": 25}


@dataclass
class Ratio:
    """One measured figure beside its goal."""

    bench: str
    what: str
    value: float
    goal: str  # e.g. ">= 0.9"
    unit: str = ""

    @property
    def met(self) -> bool:
        op, target = self.goal.split()
        target_value = float(target.replace(",", ""))
        return self.value >= target_value if op == ">=" else self.value <= target_value

    def line(self) -> str:
        verdict = "MET" if self.met else "NOT MET"
        return f"{self.bench:10} {self.what:58} {self.value:10.2f}{self.unit:8} goal {self.goal:10} {verdict}"


@dataclass
class Step:
    name: str
    argv: list[str]
    output: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    ratios: list[Ratio] = field(default_factory=list)


def run_step(step: Step, timeout: float) -> None:
    """Run one benchmark script, streaming its output."""
    print(f"\n=== {step.name}: {' '.join(step.argv)}", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    process = subprocess.Popen(
        [sys.executable, *step.argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    try:
        deadline = started + timeout
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
            if time.perf_counter() > deadline:
                process.kill()
                lines.append(f"[bench] {step.name} stopped after {timeout:.0f} s\n")
                break
        step.returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    step.seconds = time.perf_counter() - started
    step.output = "".join(lines)


# --- Ratios from each benchmark's output ---------------------------------------------------------


def sender_ratios(output: str) -> list[Ratio]:
    found = re.search(r"ratio ([0-9.]+)x \(goal >= ([0-9.]+)x\)", output)
    return (
        [Ratio("sender", "studystream send / bare pynetdicom loop", float(found.group(1)), f">= {found.group(2)}")]
        if found
        else []
    )


def receiver_rows(output: str) -> list[tuple[str, str, str, float]]:
    """(set, "associations x processes", kind, inst/s) rows of the receiver table."""
    rows = []
    last_processes: dict[tuple[str, int], str] = {}
    for m in re.finditer(r"^(0\.5MB|10KB)\s+(\d+)\s+(\d*)\s+([abcd])\s+([0-9.]+)", output, re.M):
        name, associations, processes, kind, rate = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
        if processes:
            last_processes[(name, associations)] = processes
        config = f"{associations}x{processes or last_processes.get((name, associations), '1')}"
        rows.append((name, config, kind, float(rate)))
    return rows


def receiver_ratios(output: str) -> list[Ratio]:
    ratios = []
    pattern = r"^(0\.5MB|10KB)\s+(\d+)\s+(\d+)\s+c/a = ([0-9.]+)\s+c/b = ([0-9.]+)"
    for m in re.finditer(pattern, output, re.M):
        name, associations, processes = m.group(1), int(m.group(2)), int(m.group(3))
        ca, cb = float(m.group(4)), float(m.group(5))
        if associations == 1:
            ratios.append(Ratio("receiver", f"c/a receiver / dcmtk storescp, {name}, 1 assoc.", ca, ">= 0.25"))
            ratios.append(Ratio("receiver", f"c/b receiver / bare pynetdicom, {name}, 1 assoc.", cb, ">= 2.5"))
        elif processes >= 2 and name == "10KB":
            label = f"c/a receiver / dcmtk storescp, {name}, {associations} assoc., {processes} processes"
            ratios.append(Ratio("receiver", label, ca, ">= 0.2"))
    return ratios


def aggregator_rows(output: str) -> list[tuple[int, float, float]]:
    """(study size, events/s, µs per instance)."""
    return [
        (int(m.group(1)), float(m.group(2)), float(m.group(3)))
        for m in re.finditer(r"study size\s+(\d+):.*?=\s+([0-9.]+) events/s,\s+([0-9.]+) µs/instance", output)
    ]


def aggregator_ratios(output: str) -> list[Ratio]:
    ratios = []
    cost = re.search(r"per-instance cost at (\d+) / at (\d+): ([0-9.]+) \(goal <= ([0-9.]+)\)", output)
    if cost:
        what = f"per-instance cost, study of {cost.group(1)} / of {cost.group(2)}"
        ratios.append(Ratio("aggregator", what, float(cost.group(3)), f"<= {cost.group(4)}"))
    slowest = re.search(r"slowest throughput: ([0-9.]+) events/s \(goal >= ([0-9,]+)\)", output)
    if slowest:
        ratios.append(
            Ratio(
                "aggregator", "slowest events/s per worker", float(slowest.group(1)), f">= {slowest.group(2)}", " ev/s"
            )
        )
    return ratios


# --- Plots ---------------------------------------------------------------------------------------


def plots(results: Path, receiver: list, aggregator: list, e2e: object | None) -> list[str]:
    """Write the PNG plots; returns their file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    if e2e is not None and e2e.latencies:  # type: ignore[attr-defined]
        values = sorted(e2e.latencies.values())  # type: ignore[attr-defined]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        left.plot(values, [(i + 1) / len(values) for i in range(len(values))], marker=".")
        left.axvline(e2e.goal, color="red", linestyle="--", label=f"goal p95 ≤ {e2e.goal:g} s")  # type: ignore[attr-defined]
        left.set(xlabel="last instance acknowledged → ImagingStudy readable (s)", ylabel="fraction of studies")
        left.set_title("End-to-end latency (CDF)")
        left.legend()
        order = sorted(e2e.acked_at, key=e2e.acked_at.get)  # type: ignore[attr-defined]
        for i, uid in enumerate(order):
            acked = e2e.acked_at[uid]  # type: ignore[attr-defined]
            readable = e2e.readable_at.get(uid)  # type: ignore[attr-defined]
            if readable is not None:
                right.plot([acked, readable], [i, i], color="tab:blue")
            right.plot([acked], [i], "k|")
        right.set(xlabel="seconds since the first association", ylabel="study (send order)")
        right.set_title("Acknowledged (|) → readable on FHIR")
        fig.tight_layout()
        fig.savefig(results / "e2e_latency.png", dpi=110)
        plt.close(fig)
        written.append("e2e_latency.png")
    if receiver:
        groups = sorted({(name, assoc) for name, assoc, _, _ in receiver})
        kinds = "abcd"
        labels = {"a": "a dcmtk storescp", "b": "b bare pynetdicom", "c": "c receiver", "d": "d receiver no fsync"}
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.2
        for k, kind in enumerate(kinds):
            rates = [next((r for n, a, kk, r in receiver if (n, a) == g and kk == kind), 0.0) for g in groups]
            ax.bar([i + (k - 1.5) * width for i in range(len(groups))], rates, width, label=labels[kind])
        ax.set_xticks(range(len(groups)), [f"{n}, {a} assoc. x proc." for n, a in groups])
        ax.set(ylabel="instances / s", title="Receiver benchmark (storescu in)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "receiver.png", dpi=110)
        plt.close(fig)
        written.append("receiver.png")
    if aggregator:
        fig, ax = plt.subplots(figsize=(7, 4))
        sizes = [str(size) for size, _, _ in aggregator]
        ax.bar(sizes, [rate for _, rate, _ in aggregator])
        ax.axhline(10_000, color="red", linestyle="--", label="goal ≥ 10,000 events/s")
        ax.set(xlabel="instances per study", ylabel="events / s (one worker)", title="Aggregator benchmark")
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / "aggregator.png", dpi=110)
        plt.close(fig)
        written.append("aggregator.png")
    return written


# --- Report --------------------------------------------------------------------------------------


def report(results: Path, steps: list[Step], ratios: list[Ratio], e2e_lines: list[str], images: list[str]) -> Path:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    host = f"Host: {os.cpu_count()} cores, load average {load} at the end."
    out = [f"# StudyStream benchmark report ({now})", "", host]
    out += ["Other work on the machine during the run lowers every rate; compare ratios, not absolute rates.", ""]
    out += [
        "## Ratios beside their goals",
        "",
        "| benchmark | measure | value | goal | verdict |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {r.bench} | {r.what} | {r.value:.2f}{r.unit} | {r.goal} | {'met' if r.met else '**not met**'} |"
        for r in ratios
    ]
    out += ["", "## End to end", "", "```", *e2e_lines, "```", ""]
    out += [f"![{name}]({name})" for name in images if name.startswith("e2e")]
    for step in steps:
        out += [
            "",
            f"## {step.name} ({step.seconds:.0f} s, exit {step.returncode})",
            "",
            f"`python {' '.join(step.argv)}`",
        ]
        out += ["", "```", step.output.rstrip(), "```"]
        out += [f"![{name}]({name})" for name in images if name.startswith(step.name)]
    path = results / "report.md"
    path.write_text("\n".join(out) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the component benchmarks' own (large) default sizes")
    parser.add_argument("--only", default="sender,receiver,aggregator,e2e", help="comma-separated subset")
    parser.add_argument("--quiet-period", type=float, default=2.0, help="quiet period of the end-to-end run")
    parser.add_argument("--step-timeout", type=float, default=240.0, help="seconds one component benchmark may take")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.only.split(",")}
    args.results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    steps = [
        Step(name, [f"bench/bench_{name}.py", *([] if args.full else QUICK_ARGS[name])])
        for name in ("sender", "receiver", "aggregator")
        if name in chosen
    ]
    for step in steps:
        run_step(step, args.step_timeout * (4 if args.full else 1))
    ratios: list[Ratio] = []
    by_name = {step.name: step.output for step in steps}
    ratios += sender_ratios(by_name.get("sender", ""))
    ratios += receiver_ratios(by_name.get("receiver", ""))
    ratios += aggregator_ratios(by_name.get("aggregator", ""))

    e2e_result = None
    e2e_lines: list[str] = ["(not run)"]
    if "e2e" in chosen:
        from bench.bench_e2e import run as run_e2e
        from bench.bench_e2e import summary_lines

        sizes = E2E_FULL if args.full else E2E_QUICK
        print(f"\n=== e2e: {sizes}, quiet period {args.quiet_period:g} s", flush=True)
        e2e_result = run_e2e(**sizes, quiet_period=args.quiet_period, workers=1, parallel=2, timeout=180.0)
        e2e_lines = summary_lines(e2e_result)
        print("\n".join(e2e_lines), flush=True)
        ratios.append(
            Ratio("e2e", "latency p95 / (quiet period + 2 s)", e2e_result.percentile(95) / e2e_result.goal, "<= 1.0")
        )
        ratios.append(Ratio("e2e", "latency p50", e2e_result.percentile(50), f"<= {e2e_result.goal:g}", " s"))

    images = plots(
        args.results,
        receiver_rows(by_name.get("receiver", "")),
        aggregator_rows(by_name.get("aggregator", "")),
        e2e_result,
    )
    path = report(args.results, steps, ratios, e2e_lines, images)
    print(f"\n=== every ratio beside its goal ({time.perf_counter() - started:.0f} s in all)")
    for ratio in ratios:
        print(ratio.line())
    missing = [s.name for s in steps if s.returncode != 0]
    if missing:
        print(f"benchmarks that failed or timed out: {', '.join(missing)}")
    print(
        f"report: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}; plots: {', '.join(images) or 'none'}"
    )
    return 1 if missing or (e2e_result is not None and len(e2e_result.latencies) < e2e_result.studies) else 0


if __name__ == "__main__":
    sys.exit(main())
