"""The local development stack: Kafka and HAPI FHIR fetched from Maven Central and run as processes."""
