"""The receiver's process imports none of the FHIR mapping's tables: every receiving process would carry
them (pydicom's SR code dictionaries alone are ~12 MB of RSS per process), and it never needs them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("domain.terminology_tables", "pydicom.sr", "domain.fhir_values", "fhirclient")


def test_the_receiver_does_not_import_the_fhir_mapping_s_tables() -> None:
    probe = f"import sys, scp.cli, scp.receiver; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
