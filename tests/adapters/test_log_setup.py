"""The one logging setup: component names, the two formats, the levels a process starts with."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from adapters.log_setup import (
    LIBRARIES,
    ComponentFilter,
    JsonLineFormatter,
    TextFormatter,
    component_of,
    dict_config,
)
from app.settings import Settings
from tests.conftest import ROOT

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[a-z]+\[\d+\] .+$"
)


def _record(name: str, message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_each_logger_has_the_component_of_its_part_of_the_pipeline() -> None:
    assert component_of("studystream.scp.association", "receiver") == "receiver"
    assert component_of("studystream.agents.aggregator", "worker") == "aggregator"
    assert component_of("studystream.agents.uploader", "worker") == "uploader"
    assert component_of("studystream.agents.fhir_writer", "worker") == "uploader"
    assert component_of("studystream.web.views", "worker") == "web"
    assert component_of("studystream.agents.policy", "worker") == "worker"
    assert component_of("studystream.app.worker", "worker") == "worker"
    assert component_of("studystream", "receiver") == "receiver"
    assert component_of("studystreamx", "worker") == "studystreamx"  # not ours: a library's own name
    assert component_of("aiokafka.consumer.group_coordinator", "worker") == "aiokafka"
    assert component_of("faust.worker", "worker") == "faust"


def test_text_lines_carry_time_level_component_pid_and_message() -> None:
    record = _record("studystream.agents.uploader", "study 1.2.3 revision 1 published in 0.20 s")
    ComponentFilter("worker").filter(record)
    line = TextFormatter().format(record)
    assert TEXT_LINE.match(line), line
    assert " INFO    uploader[" in line and line.endswith("] study 1.2.3 revision 1 published in 0.20 s")


def test_json_lines_carry_the_fixed_fields_and_the_call_s_extra_fields() -> None:
    record = _record("studystream.agents.uploader", "published", study_uid="1.2.3", stage="upload", duration_ms=12.5)
    ComponentFilter("worker").filter(record)
    obj = json.loads(JsonLineFormatter().format(record))
    assert obj["level"] == "INFO" and obj["component"] == "uploader" and obj["logger"] == record.name
    assert obj["message"] == "published" and isinstance(obj["pid"], int)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", obj["timestamp"])
    assert (obj["study_uid"], obj["stage"], obj["duration_ms"]) == ("1.2.3", "upload", 12.5)


def test_a_multi_line_message_stays_one_json_line() -> None:
    record = _record("faust.worker", "table\n| a | b |\n+---+", logging.WARNING)
    ComponentFilter("worker").filter(record)
    text = JsonLineFormatter().format(record)
    assert "\n" not in text and json.loads(text)["message"].count("\n") == 2


def test_libraries_start_at_warning_our_loggers_at_the_level_asked_and_overrides_on_top() -> None:
    settings = Settings(log_levels="faust=INFO,aiokafka=DEBUG", log_format="json")
    config = dict_config(settings, "worker", "DEBUG")
    loggers = config["loggers"]
    assert loggers["studystream"] == {"level": "DEBUG"}
    assert loggers["faust"] == {"level": "INFO"} and loggers["aiokafka"] == {"level": "DEBUG"}
    assert all(loggers[name] == {"level": "WARNING"} for name in LIBRARIES if name not in ("faust", "aiokafka"))
    assert loggers["httpx"] == {"level": "WARNING"}  # its INFO lines quote Patient search URLs
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["studystream"]["log_format"] == "json"
    assert dict_config(Settings(), "receiver")["loggers"]["studystream"] == {"level": "INFO"}


def test_a_configured_process_writes_only_its_own_lines_and_library_warnings(tmp_path: Path) -> None:
    """The setup applied in a fresh interpreter: library INFO gone, library WARNING and our INFO kept."""
    script = (
        "import logging\n"
        "from adapters.log_setup import configure_logging\n"
        "from app.settings import Settings\n"
        "configure_logging(Settings(), 'receiver')\n"
        "logging.getLogger('pynetdicom.assoc').info('library chatter')\n"
        "logging.getLogger('httpx').info('GET /fhir/Patient?identifier=secret')\n"
        "logging.getLogger('aiokafka').warning('library warning')\n"
        "logging.getLogger('studystream.scp.receiver').info('receiver listening')\n"
        "logging.getLogger('studystream.scp.receiver').debug('not at INFO')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "STUDYSTREAM_LOG_LEVELS": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert all(TEXT_LINE.match(line) for line in lines), lines
    assert "WARNING aiokafka[" in lines[0] and lines[0].endswith("library warning")
    assert "INFO    receiver[" in lines[1] and lines[1].endswith("receiver listening")
    assert done.stdout == ""


def test_a_bad_log_setting_stops_any_command_with_the_variable_named_and_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
    env.update(STUDYSTREAM_LOG_LEVELS="faust=INFO,aiokafka=chatty", STUDYSTREAM_STATE_DIR=str(tmp_path))
    studystream = str(Path(sys.executable).with_name("studystream"))
    for command in (["worker"], ["receive"], ["stack", "status"]):
        done = subprocess.run(
            [studystream, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr == (
            "error: STUDYSTREAM_LOG_LEVELS: log level entry 'aiokafka=chatty': 'chatty' is not a log level "
            "(one of DEBUG, INFO, WARNING, ERROR, CRITICAL)\n"
        ), command
