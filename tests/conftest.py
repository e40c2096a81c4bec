"""Fixtures more than one tier uses."""

from __future__ import annotations

import pytest

from tests.package import InstalledPackage, install_package


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> InstalledPackage:
    """The wheel built from this checkout, installed in a fresh venv outside it (once), with
    the extra the operator image installs."""
    return install_package(tmp_path_factory.mktemp("package"), extras=("operator",))
