"""The pynetdicom internals the sender's adapter (``scu/pynetdicom_hooks.py``) uses, pinned on the
installed version: an upgrade that renames one fails here, not in a send."""

from __future__ import annotations

import inspect
import threading

from pynetdicom import AE, _config
from pynetdicom.association import Association

from scu.pynetdicom_hooks import ParkedCheckpoint, park_reactor, use_chunked_send


def test_the_chunked_send_switch_exists_and_is_set() -> None:
    assert hasattr(_config, "STORE_SEND_CHUNKED_DATASET")
    use_chunked_send()
    assert _config.STORE_SEND_CHUNKED_DATASET is True


def test_the_reactor_waits_on_the_checkpoint_the_adapter_replaces() -> None:
    source = inspect.getsource(Association)
    assert "self._reactor_checkpoint.wait(" in source  # the reactor parks where the adapter's event holds it
    assert "self._reactor_checkpoint.set()" in source  # send_c_store's resume, ignored while held
    assoc = Association(AE(), "requestor")
    assert hasattr(assoc, "_reactor_checkpoint")


def test_a_parked_checkpoint_holds_the_reactor_until_released() -> None:
    checkpoint = ParkedCheckpoint()
    assert checkpoint.wait(0) is False and checkpoint.parked.is_set()  # the reactor reports it is parked
    checkpoint.set()  # pynetdicom's own resume: ignored while held
    assert checkpoint.wait(0) is False
    checkpoint.release()
    assert checkpoint.wait(0) is True


def test_park_reactor_returns_once_the_reactor_waits_and_release_lets_it_run() -> None:
    assoc = Association(AE(), "requestor")
    resumed = threading.Event()

    def reactor() -> None:  # pynetdicom's loop, reduced to its checkpoint (a free one runs straight on)
        while True:
            current = assoc._reactor_checkpoint
            if current.wait(0.01) and isinstance(current, ParkedCheckpoint):
                resumed.set()
                return

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    checkpoint = park_reactor(assoc, timeout=5)
    assert assoc._reactor_checkpoint is checkpoint and not resumed.is_set()
    checkpoint.release()
    assert resumed.wait(5)
    thread.join(5)
