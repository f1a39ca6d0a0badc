"""Start, find and stop the detached background processes of the local stack, by pid file.

A pid file alone is not proof: a pid can be reused by an unrelated process after a reboot. Every
check here also looks for a marker in the process's command line, so ``down`` never kills a stranger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """A background process the stack owns: how to start it and how to recognise it again."""

    name: str
    command: Sequence[str]
    cwd: Path
    log_file: Path
    pid_file: Path
    marker: str  # a string that must appear in /proc/<pid>/cmdline
    env: Mapping[str, str] | None = None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def recorded_pid(proc: ManagedProcess) -> int | None:
    """The pid in ``proc``'s pid file, unverified."""
    try:
        return int(proc.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(proc: ManagedProcess) -> int | None:
    """The pid of ``proc`` if its pid file names a live process that is really ``proc``, else None."""
    pid = recorded_pid(proc)
    return pid if pid is not None and proc.marker in _cmdline(pid) else None


def start(proc: ManagedProcess) -> int:
    """Start ``proc`` detached (own session, output appended to its log file) and record its pid."""
    proc.log_file.parent.mkdir(parents=True, exist_ok=True)
    proc.pid_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(proc.env or {})}
    with proc.log_file.open("ab") as log:
        child = subprocess.Popen(  # noqa: S603 - the command is built by the stack, not from input
            list(proc.command),
            cwd=proc.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.pid_file.write_text(f"{child.pid}\n")
    return child.pid


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(proc: ManagedProcess, timeout: float) -> bool:
    """Stop ``proc`` and its process group: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns True when something was stopped. The pid file is removed either way.
    """
    pid = running_pid(proc)
    stopped = False
    if pid is not None:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while is_alive(pid) and time.monotonic() < kill_deadline:
                _reap(pid)
                time.sleep(0.1)
        stopped = True
    proc.pid_file.unlink(missing_ok=True)
    return stopped


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]
