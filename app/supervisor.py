"""``studystream run`` (what ``make run`` calls): the whole pipeline in the foreground.

Brings the local stack up, starts one receiver and one worker as child processes, and on Ctrl-C (or
when a child dies) stops the children and then the stack services it started itself.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from app.settings import Settings
from infra import stack

Echo = Callable[[str], None]


def _child_commands(settings: Settings) -> dict[str, list[str]]:
    exe = [sys.executable, "-m", "app.cli"]
    commands = {"worker": [*exe, "worker", "-l", "info", "--web-port", str(settings.web_port)]}
    try:
        import scp.cli  # noqa: F401
    except ImportError:
        pass
    else:
        commands["receiver"] = [*exe, "receive"]
    return commands


def _web_credentials(settings: Settings) -> tuple[dict[str, str], str]:
    """Child environment and a hint line for the web view's login.

    The web view never runs open by accident: when no credential is configured, this run gets a
    one-time basic-auth password, shown only on this terminal.
    """
    url = f"http://localhost:{settings.web_port}/"
    if settings.web_token or settings.web_basic_user or settings.web_auth_disabled:
        return {}, f"web view: {url} (credentials from your settings)"
    password = secrets.token_urlsafe(12)
    env = {"STUDYSTREAM_WEB_BASIC_USER": "studystream", "STUDYSTREAM_WEB_BASIC_PASSWORD": password}
    return env, f"web view: {url} (user studystream, password {password}, valid for this run)"


def _stop_children(children: dict[str, subprocess.Popen[bytes]], timeout: float, echo: Echo) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, proc in children.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        echo(f"{name}: stopped (exit {proc.returncode})")


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
    children: dict[str, subprocess.Popen[bytes]] = {}
    status = 0
    try:
        web_env, web_hint = _web_credentials(settings)
        for name, command in _child_commands(settings).items():
            children[name] = subprocess.Popen(command, env={**os.environ, **web_env})  # noqa: S603 - our own CLI
            echo(f"{name}: started (pid {children[name].pid})")
        echo("")
        echo("StudyStream is running. Try it:")
        echo("  studystream synth /tmp/sample --studies 2 --series 2 --instances 5")
        echo(f"  studystream send /tmp/sample --host localhost --port {settings.dicom_port} \\")
        echo(f"      --called-ae {settings.ae_title}")
        echo(f"  {web_hint}")
        echo(f"  FHIR: {settings.fhir_base_url}/ImagingStudy")
        echo("Press Ctrl-C to stop everything.")
        while not stopping:
            dead = [name for name, proc in children.items() if proc.poll() is not None]
            if dead:
                echo(f"{', '.join(dead)} exited; stopping the pipeline")
                status = 1
                break
            time.sleep(0.5)
    finally:
        echo("stopping...")
        _stop_children(children, settings.stack_stop_timeout, echo)
        if started_services:
            stack.down(settings, started_services, echo=echo)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
