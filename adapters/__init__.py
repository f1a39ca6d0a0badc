"""StudyStream's production adapters to the outside: Kafka topics and offsets (creation, the control
topic, replay) and the FHIR server's HTTP client. The local development stack is in :mod:`infra`."""
