"""Patient names in the character sets real modalities use arrive as Unicode in the events."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings
from tests.conftest import unique_uid
from tests.scp.conftest import make_dataset, read_events, storescu, write_dataset

NAMES = {
    "ISO_IR 100": ("ISO_IR 100", "Müller^Jürgen"),
    "ISO 2022 IR 87": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "GB18030": ("GB18030", "Wang^XiaoDong=王^小东"),
    "ISO_IR 192": ("ISO_IR 192", "Ωμέγα^Ελένη=Ωμέγα^Ελένη"),
}


def test_non_ascii_patient_names_are_decoded_in_events(receiver_factory, kafka: Settings, tmp_path: Path) -> None:
    receiver = receiver_factory().start()
    study = unique_uid()
    files = {}
    for number, (label, (charset, name)) in enumerate(NAMES.items(), start=1):
        ds = make_dataset(study, charset=charset, patient_name=name, instance_number=number)
        ds.ReferringPhysicianName = name
        files[label] = write_dataset(ds, tmp_path / label.replace(" ", "_"))

    assert storescu(receiver.port, *files.values()).returncode == 0

    events = {value["instance_number"]: value for _, value in read_events(kafka, receiver.topic, expected=len(NAMES))}
    for number, (_, name) in enumerate(NAMES.values(), start=1):
        assert events[number]["patient_name"] == name
        assert events[number]["referring_physician"] == name
    raw = files["ISO 2022 IR 87"].read_bytes()
    assert "山田".encode() not in raw and b"\x1b$B" in raw  # really sent as ISO 2022 JIS, not UTF-8
