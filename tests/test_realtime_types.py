"""`deep_merge`: how `RealtimeConfig.extras` reach both providers' session payloads."""

from __future__ import annotations

from telephony_agent.realtime.providers.gemini_protocol import setup_message
from telephony_agent.realtime.providers.openai_protocol import session_update_message
from telephony_agent.realtime.types import RealtimeConfig, deep_merge


def test_deep_merge_merges_objects_replaces_the_rest_and_changes_nothing_in_place() -> None:
    base = {"audio": {"input": {"format": {"type": "audio/pcmu"}, "noise": None}}, "tools": [1], "x": 1}
    extra = {"audio": {"input": {"noise": {"type": "near_field"}}}, "tools": [2], "y": {"z": 1}}
    out = deep_merge(base, extra)
    assert out == {"audio": {"input": {"format": {"type": "audio/pcmu"}, "noise": {"type": "near_field"}}},
                   "tools": [2], "x": 1, "y": {"z": 1}}
    assert base["audio"]["input"]["noise"] is None and base["tools"] == [1]  # base untouched
    out["y"]["z"] = 2
    assert extra["y"]["z"] == 1  # values are copied out of extra


def test_extras_reach_both_providers_without_losing_neighbours() -> None:
    config = RealtimeConfig(extras={"audio": {"input": {"noise_reduction": {"type": "far_field"}}}})
    session = session_update_message(config)["session"]
    assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert "format" in session["audio"]["input"]  # the modelled fields stay
    gemini = RealtimeConfig(extras={"generationConfig": {"temperature": 0.3}, "model": "other"})
    setup = setup_message(gemini, "gemini-live", None)["setup"]
    assert setup["generationConfig"]["temperature"] == 0.3
    assert "responseModalities" in setup["generationConfig"]
    assert setup["model"] == "models/gemini-live"  # the model never changes within a session
