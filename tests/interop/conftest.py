from collections.abc import Iterator

import pytest

from tests.interop.served_hub import ServedHub, node_available


@pytest.fixture
def served() -> Iterator[ServedHub]:
    with ServedHub() as server:
        yield server


@pytest.fixture
def node() -> None:
    if not node_available():
        pytest.fail("node and tests/interop/node_modules are required (scripts/setup runs npm ci)")
