"""Dialogue scripts for the local engine: what to say, and which tool to call, for what was heard.

Sans-I/O: a `Script` is loaded from YAML (or TOML) once; `Script.match()` maps a transcript or a
DTMF digit to an `Intent`. No audio, no clock, no I/O beyond reading the file.

Script format (see `demo_receptionist.yaml`)::

    name: Demo receptionist
    voice: en-us                 # optional eSpeak NG voice (AGENT_VOICE overrides)
    greeting: Hello, ...         # said by create_response() at call start
    fallback: Sorry, ...         # said when nothing matches
    reprompt: Anything else?     # said by create_response() with nothing to answer, after the greeting
    tool_error: Sorry, ...       # said when a tool reports failure and a response is asked for
    intents:
      - name: hours
        phrases: [what are your opening hours, ...]   # also feed the recogniser's grammar
        patterns: ['\\bopen(ing)?\\b']                 # regular expressions on the transcript
        keywords: [hours, open]                          # any of these words matches (weakest)
        dtmf: "1"                                        # digit(s) matched by "The caller pressed 1."
        reply: We are open ...                           # said first
        tool: {name: transfer_call, arguments: {target: sales}}   # then called
        after: You are being transferred.                # said if a response follows the tool result
    goodbye:                     # shorthand for an intent whose tool is end_call
      phrases: [goodbye, ...]
      reply: Thank you for calling. Goodbye!
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from telephony_agent.realtime.errors import RealtimeConfigError
from telephony_agent.realtime.providers.local.asr import normalise, similarity

DEMO_SCRIPT = "demo_receptionist.yaml"
DEFAULT_REPROMPT = "Is there anything else I can help you with?"
DEFAULT_TOOL_ERROR = "Sorry, that didn't work. Is there anything else I can help you with?"
PHRASE_MIN_SIMILARITY = 0.75
_DTMF = re.compile(r"press(?:ed)?\s+(?:the\s+)?(?:key\s+)?([0-9*#]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """`text` cut after each `.`, `!` or `?`: the units the engine synthesises (and pauses between)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    phrases: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    keywords: frozenset[str] = frozenset()
    dtmf: str | None = None
    reply: str = ""
    tool: ToolCall | None = None
    after: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """`how`: dtmf | phrase | pattern | keyword | fallback; `score` in 0..1."""

    intent: Intent | None
    how: str
    score: float


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    greeting: str
    fallback: str
    intents: tuple[Intent, ...]
    reprompt: str = DEFAULT_REPROMPT
    tool_error: str = DEFAULT_TOOL_ERROR
    voice: str | None = None

    @property
    def lines(self) -> tuple[str, ...]:
        """Everything the engine can say with this script, as written (greeting, replies, ...)."""
        fixed = (self.greeting, self.fallback, self.reprompt, self.tool_error)
        said = (*fixed, *(i.reply for i in self.intents), *(i.after for i in self.intents))
        return tuple(dict.fromkeys(line for line in said if line))

    @property
    def phrases(self) -> tuple[str, ...]:
        """Every phrase of every intent, normalised: the recogniser's grammar."""
        return tuple(dict.fromkeys(normalise(p) for i in self.intents for p in i.phrases if normalise(p)))

    def match(self, text: str) -> Match:
        """The intent for a transcript or a DTMF line ("The caller pressed 5."), best evidence first."""
        digits = _DTMF.search(text)
        if digits:
            for intent in self.intents:
                if intent.dtmf is not None and intent.dtmf == digits.group(1):
                    return Match(intent, "dtmf", 1.0)
        heard = normalise(text)
        if not heard:
            return Match(None, "fallback", 0.0)
        best: tuple[float, Intent | None] = (0.0, None)
        for intent in self.intents:
            for phrase in intent.phrases:
                score = similarity(heard, normalise(phrase))
                if score > best[0]:
                    best = (score, intent)
        if best[1] is not None and best[0] >= PHRASE_MIN_SIMILARITY:
            return Match(best[1], "phrase", best[0])
        for intent in self.intents:
            if any(p.search(heard) for p in intent.patterns):
                return Match(intent, "pattern", 0.7)
        words = set(heard.split())
        for intent in self.intents:
            if intent.keywords & words:
                return Match(intent, "keyword", 0.5)
        return Match(None, "fallback", best[0])


def _text(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RealtimeConfigError(f"script: {key!r} must be a string")
    return value.strip()


def _strings(data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RealtimeConfigError(f"script: {where}.{key} must be a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def _intent(data: Any, where: str, default_tool: str | None = None) -> Intent:
    if not isinstance(data, dict):
        raise RealtimeConfigError(f"script: {where} must be a mapping")
    name = str(data.get("name", where))
    try:
        patterns = tuple(re.compile(p, re.IGNORECASE) for p in _strings(data, "patterns", where))
    except re.error as exc:
        raise RealtimeConfigError(f"script: {where}: bad pattern: {exc}") from None
    tool_data = data.get("tool", default_tool)
    tool: ToolCall | None = None
    if isinstance(tool_data, str):
        tool = ToolCall(tool_data)
    elif isinstance(tool_data, dict):
        arguments = tool_data.get("arguments", {}) or {}
        if not isinstance(tool_data.get("name"), str) or not isinstance(arguments, dict):
            raise RealtimeConfigError(f"script: {where}.tool needs a name and an arguments mapping")
        tool = ToolCall(tool_data["name"], dict(arguments))
    elif tool_data is not None:
        raise RealtimeConfigError(f"script: {where}.tool must be a name or a mapping")
    dtmf = data.get("dtmf")
    intent = Intent(
        name=name,
        phrases=_strings(data, "phrases", where),
        patterns=patterns,
        keywords=frozenset(normalise(k) for k in _strings(data, "keywords", where)),
        dtmf=str(dtmf) if dtmf is not None else None,
        reply=_text(data, "reply"),
        tool=tool,
        after=_text(data, "after"),
    )
    if not (intent.phrases or intent.patterns or intent.keywords or intent.dtmf):
        raise RealtimeConfigError(f"script: intent {name!r} has nothing to match (phrases, patterns, keywords, dtmf)")
    if not (intent.reply or intent.tool):
        raise RealtimeConfigError(f"script: intent {name!r} has neither a reply nor a tool")
    return intent


def parse_script(data: Any) -> Script:
    if not isinstance(data, dict):
        raise RealtimeConfigError("script: the top level must be a mapping")
    raw_intents = data.get("intents", [])
    if not isinstance(raw_intents, list):
        raise RealtimeConfigError("script: 'intents' must be a list")
    intents = [_intent(d, f"intents[{n}]") for n, d in enumerate(raw_intents)]
    if data.get("goodbye") is not None:
        goodbye = data["goodbye"]
        if isinstance(goodbye, dict):
            goodbye = {"name": "goodbye", **goodbye}
        intents.append(_intent(goodbye, "goodbye", default_tool="end_call"))
    voice = data.get("voice")
    return Script(
        name=_text(data, "name", "script"),
        greeting=_text(data, "greeting"),
        fallback=_text(data, "fallback", "Sorry, I didn't catch that."),
        reprompt=_text(data, "reprompt", DEFAULT_REPROMPT),
        tool_error=_text(data, "tool_error", DEFAULT_TOOL_ERROR),
        intents=tuple(intents),
        voice=str(voice) if voice else None,
    )


def load_script(path: str | Path | None = None) -> Script:
    """Read a YAML (.yaml/.yml) or TOML (.toml) script; None means the demo receptionist."""
    if path is None or str(path) == "":
        text = resources.files(__package__).joinpath(DEMO_SCRIPT).read_text(encoding="utf-8")
        suffix = ".yaml"
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RealtimeConfigError(f"cannot read dialogue script {p}: {exc}") from None
        suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - YAML and TOML raise their own error types
        raise RealtimeConfigError(f"dialogue script {path or DEMO_SCRIPT} is not valid: {exc}") from None
    return parse_script(data)
