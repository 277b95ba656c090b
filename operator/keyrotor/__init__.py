"""keyrotor: a Kubernetes operator that rotates secrets and keys with zero downtime."""

__version__ = "0.1.0"  # the single source: pyproject.toml reads it
