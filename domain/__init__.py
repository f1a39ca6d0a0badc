"""StudyStream's domain logic: pure functions and value objects, no Kafka, no network, no Faust."""
