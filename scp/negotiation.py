"""Association negotiation as the acceptor (PS3.8 7.1, PS3.7 Annex D), decided without I/O.

:func:`negotiate` takes the peer's A-ASSOCIATE-RQ (as pynetdicom decodes it) and what this receiver
offers, and returns either the A-ASSOCIATE-AC to send (accepted contexts, role selection replies,
the user identity and asynchronous operations answers) or the A-ASSOCIATE-RJ result, source and reason.
pynetdicom does the PDU coding and the presentation-context rules (:func:`negotiate_as_acceptor`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
# A UUID-derived UID (PS3.5 B.2): StudyStream has no registered root of its own.
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_DNS, 'studystream.receiver').int}"
IMPLEMENTATION_VERSION = "STUDYSTREAM_1"
MAX_CONTEXTS = 128  # presentation context IDs are the odd numbers 1-255

# A-ASSOCIATE-RJ (PS3.8 9.3.4): (result, source, reason)
PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, ACSE_PROVIDER, PRESENTATION_PROVIDER = 0x01, 0x02, 0x03
NO_REASON, APPLICATION_CONTEXT_NOT_SUPPORTED, CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 1, 2, 3, 7
PROTOCOL_VERSION_NOT_SUPPORTED = 2
LOCAL_LIMIT_EXCEEDED = 2

# What real senders use, most common first (preferred when a context offers several); every other
# syntax pydicom knows follows.
PREFERRED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
TRANSFER_SYNTAXES = [UID(uid) for uid in PREFERRED_TRANSFER_SYNTAXES] + [
    uid for uid in AllTransferSyntaxes if uid not in PREFERRED_TRANSFER_SYNTAXES
]
UNCOMPRESSED = TRANSFER_SYNTAXES[:4]


def supported_contexts() -> list[PresentationContext]:
    """Every Storage SOP class with every transfer syntax; Verification, Storage Commitment and Modality
    Performed Procedure Step uncompressed."""
    contexts = [build_context(cx.abstract_syntax, TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(VERIFICATION, UNCOMPRESSED))
    contexts.append(build_context(STORAGE_COMMITMENT, UNCOMPRESSED))
    contexts.append(build_context(MODALITY_PERFORMED_PROCEDURE_STEP, UNCOMPRESSED))
    return contexts


@dataclass(frozen=True, slots=True)
class CallingAllowlist:
    """Entries ``AE`` or ``AE@host``; an empty list allows everybody."""

    entries: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> CallingAllowlist:
        entries = []
        for item in (part.strip() for part in text.split(",")):
            if item:
                ae, _, host = item.partition("@")
                entries.append((ae.strip(), host.strip() or None))
        return cls(tuple(entries))

    def allows(self, calling_ae: str, host: str) -> bool:
        if not self.entries:
            return True
        return any(ae == calling_ae and (allowed is None or allowed == host) for ae, allowed in self.entries)


@dataclass(frozen=True, slots=True)
class Offer:
    """What this receiver accepts (from the settings)."""

    ae_title: str
    allowlist: CallingAllowlist
    max_pdu: int  # largest P-DATA-TF variable field we accept; 0: no limit
    contexts: Sequence[PresentationContext]
    require_called_ae: bool = True


@dataclass
class Accepted:
    """An A-ASSOCIATE-AC and what the association needs to know of the negotiation."""

    pdu: bytes
    calling_ae: str
    contexts: dict[int, PresentationContext]  # accepted, by context ID
    peer_max_pdu: int  # 0: no limit
    rejected_contexts: int = 0
    user_identity: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rejected:
    pdu: bytes
    calling_ae: str
    reason: str  # metric-friendly
    result: int
    source: int
    diagnostic: int


def is_ae_title(value: str) -> bool:
    """AE VR: at most 16 characters of the default repertoire, no control characters, not all spaces."""
    return 0 < len(value.strip()) <= 16 and all(32 <= ord(c) < 127 and c != "\\" for c in value)


def reject(calling_ae: str, reason: str, result: int, source: int, diagnostic: int) -> Rejected:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return Rejected(pdu.encode(), calling_ae, reason, result, source, diagnostic)


def check_titles(body: bytes) -> Rejected | None:
    """The AE titles of a raw A-ASSOCIATE-RQ variable field, checked before pynetdicom decodes it (it refuses
    control characters with an exception; the peer deserves an A-ASSOCIATE-RJ instead)."""
    if len(body) < 36:
        return None  # too short to hold them: the decoder's to judge
    called, calling = body[4:20].decode("latin-1"), body[20:36].decode("latin-1")
    if not is_ae_title(calling):
        return reject(calling.strip(), "calling_ae_not_allowed", PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
    if not is_ae_title(called):
        return reject(calling.strip(), "called_ae_not_recognised", PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED)
    return None


def negotiate(request: A_ASSOCIATE_RQ, offer: Offer, peer_host: str, limit_reached: bool) -> Accepted | Rejected:
    """Accept or reject one association request. ``limit_reached``: no room for another association."""
    primitive = request.to_primitive()
    calling, called = str(primitive.calling_ae_title), str(primitive.called_ae_title)
    contexts = list(primitive.presentation_context_definition_list or ())
    if request.protocol_version != 1:
        return reject(calling, "protocol_version", PERMANENT, ACSE_PROVIDER, PROTOCOL_VERSION_NOT_SUPPORTED)
    if str(primitive.application_context_name) != APPLICATION_CONTEXT:
        return reject(calling, "application_context", PERMANENT, SERVICE_USER, APPLICATION_CONTEXT_NOT_SUPPORTED)
    if not is_ae_title(calling):
        return reject(calling, "calling_ae_not_allowed", PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
    if not is_ae_title(called) or (offer.require_called_ae and called.strip() != offer.ae_title.strip()):
        return reject(calling, "called_ae_not_recognised", PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED)
    if not offer.allowlist.allows(calling.strip(), peer_host):
        return reject(calling, "calling_ae_not_allowed", PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
    if not contexts or len(contexts) > MAX_CONTEXTS:
        return reject(calling, "no_acceptable_context", PERMANENT, SERVICE_USER, NO_REASON)
    if limit_reached:
        return reject(calling, "association_limit", TRANSIENT, PRESENTATION_PROVIDER, LOCAL_LIMIT_EXCEEDED)

    roles = {
        str(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    results, role_replies = negotiate_as_acceptor(contexts, list(offer.contexts), roles)
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00}
    if not accepted:
        return reject(calling, "no_acceptable_context", PERMANENT, SERVICE_USER, NO_REASON)

    user_information, notes = _user_information_reply(primitive.user_information, offer.max_pdu, role_replies)
    asked_identity = any(isinstance(i, UserIdentityNegotiation) for i in primitive.user_information)

    reply = A_ASSOCIATE()
    reply.application_context_name = UID(APPLICATION_CONTEXT)
    reply.calling_ae_title = primitive.calling_ae_title
    reply.called_ae_title = primitive.called_ae_title
    reply.result, reply.result_source = 0x00, 0x01
    reply.presentation_context_definition_results_list = sorted(results, key=lambda cx: int(cx.context_id))
    reply.user_information = user_information
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(reply)
    peer_max = primitive.maximum_length_received
    return Accepted(
        pdu.encode(),
        calling.strip(),
        accepted,
        int(peer_max) if peer_max else 0,
        rejected_contexts=len(results) - len(accepted),
        user_identity=asked_identity,
        notes=notes,
    )


def _user_information_reply(
    items: list[object], max_pdu: int, role_replies: list[object]
) -> tuple[list[object], list[str]]:
    """The A-ASSOCIATE-AC's user information: our limits and implementation, the role, user identity and
    asynchronous operations window answers; and notes on what was answered differently from the request."""
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    reply: list[object] = [max_length, implementation, version, *role_replies]
    notes = []
    identity = _identity_answer(items)
    if identity is not None:
        reply.append(identity)
    window = next((i for i in items if isinstance(i, AsynchronousOperationsWindowNegotiation)), None)
    if window is not None and (
        window.maximum_number_operations_invoked,
        window.maximum_number_operations_performed,
    ) != (
        1,
        1,
    ):
        answer = AsynchronousOperationsWindowNegotiation()
        answer.maximum_number_operations_invoked = 1
        answer.maximum_number_operations_performed = 1
        reply.append(answer)
        notes.append("asynchronous operations window answered 1/1")
    return reply, notes


def _identity_answer(items: Iterable[object]) -> UserIdentityNegotiation | None:
    """User identity is accepted as given (StudyStream authenticates by AE title, address and TLS);
    a peer asking for a positive response gets one, with an empty server response."""
    for item in items:
        if isinstance(item, UserIdentityNegotiation) and item.positive_response_requested:
            answer = UserIdentityNegotiation()
            answer.server_response = b""
            return answer
    return None
