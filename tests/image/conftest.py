"""The image tier reuses the operator tier's CRD and API fixtures."""

from tests.operator.conftest import crds, kapi

__all__ = ["crds", "kapi"]
