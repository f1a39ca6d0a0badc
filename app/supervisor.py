"""``studystream run`` (what ``make run`` calls): the whole pipeline in the foreground.

Brings the local stack up, starts one receiver and one worker as child processes, prints once where
everything answers (and the web view's login) when both are up, then lets the children's log lines
through; on Ctrl-C (or when a child dies) it stops the children and then the stack services it
started itself, and says what it stopped.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from app.settings import Settings
from infra import stack

Echo = Callable[[str], None]
Children = dict[str, subprocess.Popen[bytes]]


def _child_commands(settings: Settings) -> dict[str, list[str]]:
    exe = [sys.executable, "-m", "app.cli"]
    commands = {"worker": [*exe, "worker", "--web-port", str(settings.web_port)]}
    try:
        import scp.cli  # noqa: F401
    except ImportError:
        pass
    else:
        commands["receiver"] = [*exe, "receive"]
    return commands


def _web_credentials(settings: Settings) -> tuple[dict[str, str], str]:
    """Child environment and the login as the address lines show it.

    The web view never runs open by accident: when no credential is configured, this run gets a
    one-time basic-auth password, shown only on this terminal.
    """
    if settings.web_token or settings.web_basic_user or settings.web_auth_disabled:
        return {}, "credentials from your settings"
    password = secrets.token_urlsafe(12)
    env = {"STUDYSTREAM_WEB_BASIC_USER": "studystream", "STUDYSTREAM_WEB_BASIC_PASSWORD": password}
    return env, f"user studystream, password {password} (valid for this run)"


class _Relay(threading.Thread):
    """Copies a child's output lines to this terminal as they come; notes the line that says it is up."""

    _lock = threading.Lock()

    def __init__(self, proc: subprocess.Popen[bytes], marker: str) -> None:
        super().__init__(daemon=True)
        self.proc, self.marker, self.up = proc, marker.encode(), threading.Event()

    def run(self) -> None:
        assert self.proc.stdout is not None
        out = getattr(sys.stdout, "buffer", None)
        for line in self.proc.stdout:
            with self._lock:
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stdout.write(line.decode(errors="replace"))
            if self.marker in line:
                self.up.set()


def _start(name: str, command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], _Relay]:
    from app.worker import READY_MESSAGE

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603 - our CLI
    relay = _Relay(proc, READY_MESSAGE if name == "worker" else "listening on")
    relay.start()
    return proc, relay


def _wait_until_up(settings: Settings, children: Children, relays: list[_Relay], stopping: Callable[[], bool]) -> bool:
    """Until every child has logged that it is up (the worker once its tables are recovered); False on
    Ctrl-C, a child's exit or ``stack_start_timeout``."""
    deadline = time.monotonic() + settings.stack_start_timeout
    while not stopping() and time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in children.values()):
            return False
        if all(relay.up.is_set() for relay in relays):
            return True
        time.sleep(0.2)
    return False


def _addresses(settings: Settings, children: Children, login: str, up: bool) -> list[str]:
    host = "localhost" if settings.dicom_host in ("0.0.0.0", "::", "") else settings.dicom_host  # noqa: S104
    pids = ", ".join(f"{name} pid {proc.pid}" for name, proc in children.items())
    lines = [f"StudyStream is running ({pids}):" if up else f"StudyStream is starting ({pids}), not answering yet:"]
    if "receiver" in children:
        lines.append(f"  DICOM     {host}:{settings.dicom_port}, AE title {settings.ae_title}")
    lines += [
        f"  web view  http://localhost:{settings.web_port}/  {login}",
        f"  FHIR      {settings.fhir_base_url}  (studies: {settings.fhir_base_url}/ImagingStudy)",
        f"  Kafka     {', '.join(settings.bootstrap_servers)}  ({settings.topic_raw} -> {settings.topic_ready})",
        "Try it:",
        "  studystream synth /tmp/sample --studies 2 --series 2 --instances 5",
        f"  studystream send /tmp/sample --host {host} --port {settings.dicom_port} --called-ae {settings.ae_title}",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return lines


def _watch(children: Children, stopping: Callable[[], bool], echo: Echo) -> int:
    """Until Ctrl-C (0) or a child's own exit (1)."""
    while not stopping():
        dead = [name for name, proc in children.items() if proc.poll() is not None]
        if dead:
            echo(f"{', '.join(dead)} exited on its own; stopping the pipeline")
            return 1
        time.sleep(0.5)
    return 0


def _stop_children(children: Children, timeout: float, relays: list[_Relay], echo: Echo) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for relay in relays:
        relay.join(timeout=2.0)  # the children's last lines before ours
    for name, proc in children.items():
        echo(f"{name}: stopped (pid {proc.pid}, exit {proc.returncode})")


def _stopped_summary(children: Children, started: list[str], already: set[str]) -> str:
    line = f"Stopped: {', '.join([*children, *started]) or 'nothing'}."
    kept = [name for name in stack.SERVICES if name in already]
    return line + (f" Left running: {', '.join(kept)} (running before this run started)." if kept else "")


def run_pipeline(settings: Settings, echo: Echo = print) -> int:
    """Run until interrupted; the exit status is 0 after Ctrl-C, 1 when a child died on its own."""
    already = {item.name for item in stack.status(settings) if item.healthy}
    stack.up(settings, echo=echo)
    started_services = [name for name in stack.SERVICES if name not in already]

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: Children = {}
    relays: list[_Relay] = []
    status = 0
    try:
        web_env, login = _web_credentials(settings)
        for name, command in _child_commands(settings).items():
            children[name], relay = _start(name, command, {**os.environ, **web_env})
            relays.append(relay)
        up = _wait_until_up(settings, children, relays, lambda: stopping)
        if not stopping and all(proc.poll() is None for proc in children.values()):
            echo("\n".join(["", *_addresses(settings, children, login, up)]))
        status = _watch(children, lambda: stopping, echo)
    finally:
        echo("stopping...")
        _stop_children(children, settings.stack_stop_timeout, relays, echo)
        if started_services:
            stack.down(settings, started_services, echo=echo)
        echo(_stopped_summary(children, started_services, already))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
