"""Settings: environment names, defaults, clear errors for bad values, secrets masked."""

import pytest

from telephony_agent.settings import Provider, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_pick_the_local_engine() -> None:
    s = load_settings()
    assert s.effective_provider is Provider.LOCAL
    assert s.port == 8080 and s.playout_lead_ms == 200 and s.twilio_validate


def test_auto_prefers_a_provider_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "g-key")
    assert load_settings().effective_provider is Provider.GEMINI
    monkeypatch.setenv("OPENAI_API_KEY", "o-key")
    assert load_settings().effective_provider is Provider.OPENAI


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("AGENT_PORT", "eighty", "AGENT_PORT"),
        ("AGENT_PORT", "70000", "AGENT_PORT"),
        ("AGENT_PROVIDER", "watson", "AGENT_PROVIDER"),
        ("AGENT_PUBLIC_URL", "agent.example.com", "AGENT_PUBLIC_URL"),
        ("AGENT_LOG_LEVEL", "LOUD", "AGENT_LOG_LEVEL"),
        ("AGENT_TWILIO_VALIDATE", "maybe", "AGENT_TWILIO_VALIDATE"),
        ("AGENT_WORKER_TIMEOUT_SECONDS", "1", "AGENT_WORKER_TIMEOUT_SECONDS is 0 (off) or at least 3"),
        ("AGENT_WORKER_TIMEOUT_SECONDS", "-1", "AGENT_WORKER_TIMEOUT_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert expected in str(info.value)


def test_provider_without_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_PROVIDER", "openai")
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        load_settings()


def test_allowlist_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_TRANSFER_ALLOWLIST", "sales=+15551230000, +15559990000")
    assert load_settings().transfer_allowlist == ["sales=+15551230000", "+15559990000"]


def test_secrets_are_masked_and_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tw-secret")
    s = load_settings()
    masked = s.masked()
    assert masked["OPENAI_API_KEY"] == "********" and masked["TWILIO_AUTH_TOKEN"] == "********"
    assert "sk-very-secret" not in repr(s) and "tw-secret" not in str(masked)


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / ".env").write_text("AGENT_PORT=9090\n")
    assert load_settings().port == 9090
