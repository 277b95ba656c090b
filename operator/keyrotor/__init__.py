"""keyrotor: a Kubernetes operator that rotates secrets and keys with zero downtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keyrotor")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
