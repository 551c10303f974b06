"""Fixtures for the output builder tests (helpers live in ``outputs_support``)."""

from __future__ import annotations

import pytest
from outputs_support import make_settings

from spinexr.node.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return make_settings()
