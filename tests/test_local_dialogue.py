"""Dialogue scripts: the shipped demo, TOML scripts, matching and validation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from telephony_agent.realtime import RealtimeConfigError
from telephony_agent.realtime.providers.local import LocalRealtimeModel, load_script


def test_demo_script_ships_in_the_package_and_matches() -> None:
    assert resources.files("telephony_agent.realtime.providers.local").joinpath("demo_receptionist.yaml").is_file()
    script = load_script()
    assert script.greeting and script.fallback and "what are your opening hours" in script.phrases
    cases = {
        "what are your opening hours on saturday": "opening_hours",
        "what are opening up on saturday": "opening_hours",  # general-model style near miss
        "what is your address": "address",
        "The caller pressed 1.": "sales",
        "i want to talk to support": "support",
        "goodbye": "goodbye",
    }
    for text, name in cases.items():
        assert script.match(text).intent is not None and script.match(text).intent.name == name, text
    goodbye = script.match("thank you bye").intent
    assert goodbye is not None and goodbye.tool is not None and goodbye.tool.name == "end_call"
    assert script.match("can i order a pizza").intent is None
    assert script.match("").how == "fallback"


def test_toml_script_and_model_from_path(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(
        'greeting = "Hi."\nfallback = "Pardon?"\n'
        '[[intents]]\nname = "price"\nphrases = ["how much is it"]\nreply = "Ten pounds."\n'
        '[[intents]]\nname = "human"\nkeywords = ["person"]\nreply = "One moment."\n'
        'tool = { name = "transfer_call", arguments = { target = "desk" } }\n'
    )
    model = LocalRealtimeModel(script_path=str(path))
    assert model.provider == "local" and model.script.phrases == ("how much is it",)
    assert model.script.match("can i speak to a person").intent.tool.arguments == {"target": "desk"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        "- just a list",
        "intents: [{name: x, reply: hi}]",  # nothing to match
        "intents: [{name: x, phrases: [hi]}]",  # nothing to say or do
        "intents: [{name: x, patterns: ['(('], reply: hi}]",
        "intents: [{name: x, phrases: [hi], tool: {arguments: {}}}]",
        "greeting: [not, a, string]",
    ],
)
def test_bad_scripts_are_refused_at_start_up(tmp_path: Path, body: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(RealtimeConfigError):
        load_script(path)


def test_missing_script_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(RealtimeConfigError):
        LocalRealtimeModel(script_path=str(tmp_path / "nope.yaml"))
