"""The live monitoring test runs a real operator: it borrows the operator tier's fixtures."""

from tests.operator.conftest import crds, kapi

__all__ = ["crds", "kapi"]
