"""The uploader suites' record factories (they live in :mod:`tests.factories`)."""

from tests.factories import CT_IMAGE_STORAGE, SR_STORAGE, make_ready, with_counts

__all__ = ["CT_IMAGE_STORAGE", "SR_STORAGE", "make_ready", "with_counts"]
