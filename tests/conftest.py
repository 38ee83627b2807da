import sys
from pathlib import Path

import pytest

# Test peers and helpers import as top-level modules (`peers.fake_openai`, `agent_server`).
sys.path.insert(0, str(Path(__file__).parent))

from peers import conformance


@pytest.fixture(autouse=True)
def _provider_messages_conform():
    """Fail any test in which a provider sent a message the official SDK types reject."""
    start = len(conformance.VIOLATIONS)
    yield
    new = conformance.VIOLATIONS[start:]
    if new:
        details = "\n".join(f"{v.provider}: {v.error}\n  {str(v.message)[:300]}" for v in new)
        pytest.fail(f"provider messages failed SDK validation:\n{details}", pytrace=False)
