from tests.unit.examples import _example_docs, catalog, example_docs, services

__all__ = ["_example_docs", "catalog", "example_docs", "services"]
