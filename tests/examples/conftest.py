"""The examples tier reuses the operator tier's fixtures: the CRD and the Kubernetes API."""

from tests.operator.conftest import crds, kapi

__all__ = ["crds", "kapi"]
