"""Association negotiation as the acceptor, without a socket: every accept and reject decision."""

from __future__ import annotations

import threading

from pynetdicom import build_role
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

from scp.negotiation import (
    STORAGE_COMMITMENT,
    Accepted,
    CallingAllowlist,
    Offer,
    Rejected,
    check_titles,
    negotiate,
    supported_contexts,
)
from scp.outbox import Outbox
from tests.factories import make_event

CT = "1.2.840.10008.5.1.4.1.1.2"
OFFER = Offer("STUDYSTREAM", CallingAllowlist.parse("MOD1, PACS@10.0.0.5"), 131072, supported_contexts())


def request(
    calling: str = "MOD1", called: str = "STUDYSTREAM", *extra: object, abstract: str = CT, commitment: bool = True
) -> A_ASSOCIATE_RQ:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    cx = build_context(abstract, ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"])
    cx.context_id = 1
    commit = build_context(STORAGE_COMMITMENT)
    commit.context_id = 3
    primitive.presentation_context_definition_list = [cx, commit] if commitment else [cx]
    length = MaximumLengthNotification()
    length.maximum_length_received = 4096
    primitive.user_information = [length, *extra]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(pdu.encode())
    return decoded


def test_a_good_request_is_accepted_with_the_preferred_syntax_and_the_peers_pdu_limit() -> None:
    outcome = negotiate(request(), OFFER, "10.0.0.9", limit_reached=False)
    assert isinstance(outcome, Accepted)
    assert outcome.calling_ae == "MOD1" and outcome.peer_max_pdu == 4096
    assert str(outcome.contexts[1].transfer_syntax[0]) == "1.2.840.10008.1.2"  # implicit LE preferred over JPEG 2000
    reply = A_ASSOCIATE_AC()
    reply.decode(outcome.pdu)
    assert reply.to_primitive().maximum_length_received == 131072


def test_user_identity_role_selection_and_the_operations_window_are_answered() -> None:
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field, identity.positive_response_requested = 1, b"bob", True
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 5
    role = build_role(STORAGE_COMMITMENT, scu_role=True, scp_role=True)
    outcome = negotiate(request("MOD1", "STUDYSTREAM", identity, window, role), OFFER, "h", False)
    assert isinstance(outcome, Accepted) and outcome.user_identity
    reply = A_ASSOCIATE_AC()
    reply.decode(outcome.pdu)
    items = reply.to_primitive().user_information
    kinds = {type(item).__name__ for item in items}
    assert {"UserIdentityNegotiation", "AsynchronousOperationsWindowNegotiation"} <= kinds
    answered = next(i for i in items if isinstance(i, AsynchronousOperationsWindowNegotiation))
    assert (answered.maximum_number_operations_invoked, answered.maximum_number_operations_performed) == (1, 1)


def reason(outcome: Accepted | Rejected) -> tuple[int, int, int]:
    assert isinstance(outcome, Rejected)
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(outcome.pdu)
    return (pdu.result, pdu.source, pdu.reason_diagnostic)


def test_each_rejection_has_its_result_source_and_reason() -> None:
    assert reason(negotiate(request("STRANGER"), OFFER, "h", False)) == (1, 1, 3)
    assert reason(negotiate(request("PACS"), OFFER, "10.0.0.6", False)) == (1, 1, 3)  # right AE, wrong host
    assert reason(negotiate(request("MOD1", "ELSEWHERE"), OFFER, "h", False)) == (1, 1, 7)
    raw = bytearray(A_ASSOCIATE_RQ.encode(request()))
    raw[26:42] = b"MO\x07D1".ljust(16)  # a control character pynetdicom would not decode
    assert reason(check_titles(bytes(raw[6:]))) == (1, 1, 3)  # type: ignore[arg-type]
    raw[10:26] = b"STUDY\nSTREAM".ljust(16)
    raw[26:42] = b"MOD1".ljust(16)
    assert reason(check_titles(bytes(raw[6:]))) == (1, 1, 7)  # type: ignore[arg-type]
    assert check_titles(A_ASSOCIATE_RQ.encode(request())[6:]) is None
    assert reason(
        negotiate(request(abstract="1.2.826.0.1.3680043.10.1404.9", commitment=False), OFFER, "h", False)
    ) == (1, 1, 1)
    assert reason(negotiate(request(), OFFER, "h", limit_reached=True)) == (2, 3, 2)


def test_outbox_adds_of_concurrent_associations_share_their_commits(tmp_path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", fsync=True)
    commits = 0
    real = outbox._commit_group

    def counting(batch: list) -> None:
        nonlocal commits
        commits += 1
        real(batch)

    outbox._commit_group = counting  # type: ignore[method-assign]
    ids: list[int] = []
    barrier = threading.Barrier(16)

    def add(n: int) -> None:
        barrier.wait()
        for i in range(20):
            ids.append(outbox.add(make_event(f"1.2.{n}", f"1.2.{n}.1", i + 1)))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == len(set(ids)) == 320 and outbox.depth() == 320
    assert commits < 320, "every add committed alone"
    print(f"320 adds from 16 threads in {commits} commits")
    outbox.close()
