"""The local stack (Kafka + HAPI FHIR started from Maven Central artifacts) and Kafka topic administration."""
