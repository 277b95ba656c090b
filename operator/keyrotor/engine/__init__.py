"""The pure rotation engine: no I/O, time injected."""
