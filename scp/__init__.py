"""DICOM receiver: an asyncio acceptor (C-STORE, C-ECHO, Storage Commitment SCP), storage, durable outbox,
publisher, metrics."""
