"""`.env.example` documents every setting with its default, and nothing that doesn't exist."""

from pathlib import Path

from telephony_agent.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _documented() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            out[name] = value
    return out


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented()
    defaults = Settings.model_construct().masked()
    names = Settings.model_construct().env_names()
    assert set(documented) == set(names.values())
    for env, default in defaults.items():
        if default == "********":
            continue
        if default.replace(".", "", 1).isdigit():
            assert float(documented[env]) == float(default), env
        else:
            assert documented[env] == default, env
