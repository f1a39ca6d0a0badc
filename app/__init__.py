"""StudyStream's application package: settings, the Faust app with its topics, and the CLI."""
