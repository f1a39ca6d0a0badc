"""Faust agents: thin shells that decode, call domain functions, and send; ``register`` wires them to an app."""
