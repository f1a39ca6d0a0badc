"""DICOM receiver (C-STORE SCP): storage, durable outbox, publisher, metrics."""
