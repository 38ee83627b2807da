import os
import sys
import tempfile
from pathlib import Path

import pytest

# The eSpeak/sox clips are cached on disk across runs; `make test` runs 3.11 and 3.13 side by side,
# and two processes making the same clip at once share its temporary files (one can read the other's
# half-written WAV, or find it deleted). A cache per Python keeps the two runs apart.
os.environ.setdefault(
    "TEST_SPEECH_CACHE",
    str(Path(tempfile.gettempdir()) / f"telephony-agent-speech-py{sys.version_info[0]}.{sys.version_info[1]}"),
)

# Test peers and helpers import as top-level modules (`peers.fake_openai`, `agent_server`).
sys.path.insert(0, str(Path(__file__).parent))

from peers import conformance

PEER_SHARES = ("all", "none", "3.11", "3.13")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--peers", choices=PEER_SHARES, default="all",
        help="tests marked `peers` (interop with an external program: sipp, pjsua2, baresip, kamailio, "
             "Chromium) or `once` (a benchmark tool's own test): all (default), none, or only the share "
             "of the Python named (`make test` runs each of them once, on 3.11 or 3.13 as its marker says)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--peers=3.11|3.13`: keep the unmarked tests and the `peers` / `once` tests of that Python's share."""
    share = config.getoption("--peers")
    if share == "all":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("peers") or item.get_closest_marker("once")
        on = None if marker is None else marker.kwargs.get("python", "3.11")
        (kept if on is None or on == share else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _provider_messages_conform():
    """Fail any test in which a provider sent a message the official SDK types reject."""
    start = len(conformance.VIOLATIONS)
    yield
    new = conformance.VIOLATIONS[start:]
    if new:
        details = "\n".join(f"{v.provider}: {v.error}\n  {str(v.message)[:300]}" for v in new)
        pytest.fail(f"provider messages failed SDK validation:\n{details}", pytrace=False)
