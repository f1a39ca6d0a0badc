"""docs/mapping.md lists every DICOM attribute the event builder reads, and is what the table renders."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from app.mapping_doc import mapping_document
from domain.mapping_table import MAPPING_TABLE, table_keywords

ROOT = Path(__file__).resolve().parents[2]
# Read for the pipeline itself, not mapped to an element.
ROUTING = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}


def keywords_read_by_event_builder() -> set[str]:
    source = "".join((ROOT / "domain" / name).read_text() for name in ("dicom_event.py", "dicom_reader.py"))
    literals = set(re.findall(r'"([A-Z][A-Za-z0-9]+)"', source))
    return {k for k in literals if tag_for_keyword(k) is not None}


def test_every_keyword_the_event_builder_reads_is_in_the_mapping_table() -> None:
    read = keywords_read_by_event_builder()
    assert len(read) > 40  # the scan finds the keywords at all
    assert sorted(read - table_keywords() - ROUTING) == []


def test_every_keyword_in_the_table_is_a_dicom_keyword() -> None:
    assert sorted(k for k in table_keywords() if tag_for_keyword(k) is None) == []


def test_every_row_names_an_element_and_a_rule() -> None:
    assert all(row.fhir and row.rule.endswith(".") for row in MAPPING_TABLE)


def test_docs_mapping_is_the_rendered_table() -> None:
    on_disk = (ROOT / "docs" / "mapping.md").read_text()
    assert on_disk == mapping_document(), "run `python -m app.mapping_doc --write docs/mapping.md`"
