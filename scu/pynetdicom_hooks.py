"""The pynetdicom internals the sender relies on, in one place (pinned by ``tests/scu/test_library_internals.py``):
the association reactor's checkpoint (``Association._reactor_checkpoint``) and the chunked C-STORE
switch (``pynetdicom._config.STORE_SEND_CHUNKED_DATASET``)."""

from __future__ import annotations

import threading

from pynetdicom import _config
from pynetdicom.association import Association

from scu.errors import AssociationFailed


def use_chunked_send() -> None:
    """``send_c_store(path)`` streams the file from disk instead of reading the whole dataset into memory."""
    _config.STORE_SEND_CHUNKED_DATASET = True


class ParkedCheckpoint(threading.Event):
    """Keeps a requestor's reactor thread parked while this thread runs the DIMSE exchanges.

    pynetdicom 3.0 pauses the association reactor around each ``send_c_store`` with a flag check that
    races: a reactor that passed its checkpoint just before the pause can take the C-STORE-RSP off the
    DIMSE queue ("Received unexpected C-STORE service message"), and the sender then waits for the full
    DIMSE timeout. Against a fast peer (storescp, TCP_NODELAY) that hit about one association in five
    of 400 instances. Parked on this checkpoint the reactor cannot run; ``send_c_store``'s own
    ``set()`` is ignored until :meth:`release` lets it go (needed for N-EVENT-REPORTs and release).
    """

    def __init__(self) -> None:
        super().__init__()
        self.parked = threading.Event()
        self._holding = True

    def wait(self, timeout: float | None = None) -> bool:
        if self._holding:
            self.parked.set()
        return super().wait(timeout)

    def set(self) -> None:
        if not self._holding:
            super().set()

    def release(self) -> None:
        self._holding = False
        super().set()


def park_reactor(assoc: Association, timeout: float) -> ParkedCheckpoint:
    # Done before any request is sent, so a reactor still finishing its last round has nothing to steal.
    checkpoint = ParkedCheckpoint()
    assoc._reactor_checkpoint = checkpoint
    if not checkpoint.parked.wait(timeout):
        raise AssociationFailed("association reactor did not pause")
    return checkpoint
