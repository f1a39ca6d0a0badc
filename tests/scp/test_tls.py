"""The receiver over TLS (DICOM PS3.15 Annex B): mutual TLS with a private CA, plain TCP refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from app.settings import Settings
from tests.scp.conftest import dataset_bytes, make_dataset, read_events, write_dataset


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("StudyStream test CA", ca_key, _name("StudyStream test CA"), ca_key, ca=True)

    def write(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_path, _ = write("ca", ca_key, ca_cert)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = write("server", server_key, _issue("localhost", server_key, ca_cert.subject, ca_key, ca=False))
    client = write("client", client_key, _issue("MODALITY", client_key, ca_cert.subject, ca_key, ca=False))
    return Pki(ca_path, server[0], server[1], client[0], client[1])


def client_context(pki: Pki, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if with_certificate:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _requestor() -> AE:
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.network_timeout = 10
    return ae


def test_mutual_tls_association_stores_and_publishes_while_plain_and_anonymous_peers_are_refused(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    receiver = receiver_factory(
        STUDYSTREAM_RECEIVER_TLS_CERT=str(pki.server_cert),
        STUDYSTREAM_RECEIVER_TLS_KEY=str(pki.server_key),
        STUDYSTREAM_RECEIVER_TLS_CA=str(pki.ca),  # clients must present a certificate from this CA
    ).start()
    ds = make_dataset()
    path = write_dataset(ds, tmp_path / "in")

    assoc = _requestor().associate(
        "127.0.0.1",
        receiver.port,
        ae_title="STUDYSTREAM",
        tls_args=(client_context(pki, with_certificate=True), "localhost"),
    )
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()
    (event,) = read_events(kafka, receiver.topic, expected=1)
    assert event[1]["sop_instance_uid"] == str(ds.SOPInstanceUID)
    (stored,) = receiver.stored_files()
    assert dataset_bytes(stored) == dataset_bytes(path)

    plain = _requestor().associate("127.0.0.1", receiver.port, ae_title="STUDYSTREAM")
    assert not plain.is_established
    anonymous = _requestor().associate(
        "127.0.0.1",
        receiver.port,
        ae_title="STUDYSTREAM",
        tls_args=(client_context(pki, with_certificate=False), "localhost"),
    )
    assert not anonymous.is_established
