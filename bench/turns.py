"""Turn-taking benchmark: barge-in reaction time, false interruptions on a noise set, CPU per call.

Run with `make bench-turns` (or `python bench/turns.py`). Everything runs on a virtual clock
through `telephony_agent.testing.turn_sim`: an agent answer (eSpeak NG, mu-law) plays frame by
frame, the caller leg carries real speech or sox-made noise, optionally with the agent's echo, and
`TurnDetector` decides. Prints markdown tables.

- Reaction time: from the true speech onset (first 10 ms above -40 dBFS) of an interruption to
  the `PAUSE` decision, which is when the bridge sends `clear` to the phone leg; and to the
  `BARGE_IN` decision (the provider is interrupted, the answer dropped). Caller frames arrive
  whole (20 ms), so the figure includes the wait for the frame that carries the onset.
- False interruptions: noise clips at three levels and many offsets over agent speech, with and
  without echo; a false interruption is a `BARGE_IN`; a `PAUSE` later resumed is counted apart.
- Speech in bursts: an interruption spoken as words 450 ms apart (each alone a backchannel by its
  length), and two backchannels 450 ms apart: resumes before the barge-in (the agent stopping and
  starting again), the barge-in from the first onset, and how many backchannel pairs interrupted.
- CPU: process time inside the detector per 20 ms caller frame (agent audio included), one core.
- `--sweep`: `AGENT_MIN_INTERRUPTION_MS` from 100 to 400 ms with backchannel detection off, to
  choose its default: the lowest value with no false interruption that still confirms speech.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one call = one core
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "codecs"))

from telephony_agent.telephony.turns import TurnAction, TurnSettings
from telephony_agent.testing.noise import NAMES, noise_pcm16
from telephony_agent.testing.speech import speech_pcm16
from telephony_agent.testing.turn_sim import AGENT_TEXT, law, onset, simulate

INTERRUPTIONS = [
    ("wait, stop, I have a different question", "en-us"),
    ("sorry, can I ask about my order instead", "en-us+m3"),
    ("no no, that is not what I asked", "en-gb"),
    ("hold on a second, I need to change my booking", "en-us+f2"),
]
BACKCHANNELS = ["mhm", "yeah", "okay", "uh-huh", "right", "sure", "yes"]


def pcm(text: str, voice: str = "en-us") -> np.ndarray:
    return np.frombuffer(speech_pcm16(text, voice=voice), "<i2").astype(np.float64)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def reaction(agent: np.ndarray, settings: TurnSettings, offsets: list[float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"clear": [], "barge": [], "missed": []}
    for text, voice in INTERRUPTIONS:
        speech = law(pcm(text, voice))
        for echo in (None, -10.0):
            for k, at in enumerate(offsets):
                run = simulate(agent, [(at, speech)], seconds=at + 3.0, echo_db=echo, settings=settings, seed=k)
                start = onset(speech, at)
                pause, barge = run.first(TurnAction.PAUSE), run.first(TurnAction.BARGE_IN)
                if pause is None or barge is None:
                    out["missed"].append(at)
                    continue
                out["clear"].append((pause.at - start) * 1000)
                out["barge"].append((barge.at - start) * 1000)
    return out


def false_interruptions(agent: np.ndarray, settings: TurnSettings, offsets: list[float]) -> tuple[int, int, int]:
    """(trials, barge-ins, pauses) for every noise clip at -6/0/+6 dB, with and without echo."""
    trials = barges = pauses = 0
    for name in NAMES:
        clip = np.frombuffer(noise_pcm16(name), "<i2").astype(np.float64)
        for gain_db in (-6.0, 0.0, 6.0):
            sound = clip * 10 ** (gain_db / 20)
            for echo in (None, -10.0):
                for k, at in enumerate(offsets):
                    run = simulate(agent, [(at, sound)], seconds=at + sound.size / 8000 + 1.6,
                                   echo_db=echo, settings=settings, seed=k)
                    trials += 1
                    actions = run.actions()
                    barges += TurnAction.BARGE_IN in actions
                    pauses += actions.count(TurnAction.PAUSE)
    return trials, barges, pauses


def backchannels(agent: np.ndarray, settings: TurnSettings, offsets: list[float]) -> tuple[int, int]:
    trials = barges = 0
    for word in BACKCHANNELS:
        speech = law(pcm(word))
        for k, at in enumerate(offsets):
            run = simulate(agent, [(at, speech)], seconds=at + 2.5, settings=settings, seed=k)
            trials += 1
            barges += TurnAction.BARGE_IN in run.actions()
    return trials, barges


# An interruption spoken in short bursts with gaps longer than `end_gap_ms` (300 ms): each
# burst alone ends within `backchannel_ms` of its onset. Seen in the load benchmark (one caller's
# speech, 448 ms voiced a burst): the agent paused and resumed at each burst before the barge-in.
BURSTS = [
    (["wait", "hold on", "I have a different question"], "en-us"),
    (["no", "sorry", "that is not what I asked"], "en-gb"),
]
DOUBLE_BACKCHANNELS = [("mhm", "yeah"), ("okay", "right"), ("yes", "sure")]
GAP_S = 0.45  # between bursts: over `end_gap_ms`, under `backchannel_ms`


def spaced(words: list[str], voice: str = "en-us") -> np.ndarray:
    """The words spoken one after the other with `GAP_S` of silence between them."""
    gap = np.zeros(round(GAP_S * 8000))
    parts: list[np.ndarray] = []
    for word in words:
        parts += [law(pcm(word, voice)), gap]
    return np.concatenate(parts[:-1])


def bursts(agent: np.ndarray, settings: TurnSettings, offsets: list[float]) -> dict[str, list[float]]:
    """Speech in bursts over the agent: resumes before the barge-in (the agent stopping and
    starting again: each one a pause the caller hears end), the barge-in time from the first
    onset, and interruptions missed; then two backchannels `GAP_S` apart: how many interrupted."""
    out: dict[str, list[float]] = {"flaps": [], "barge": [], "missed": [], "double_barges": [], "double_flaps": []}
    for words, voice in BURSTS:
        speech = spaced(words, voice)
        for k, at in enumerate(offsets):
            run = simulate(agent, [(at, speech)], seconds=at + speech.size / 8000 + 2.0, settings=settings, seed=k)
            actions = run.actions()
            barge = run.first(TurnAction.BARGE_IN)
            if barge is None:
                out["missed"].append(at)
                continue
            out["flaps"].append(actions[: actions.index(TurnAction.BARGE_IN)].count(TurnAction.RESUME))
            out["barge"].append((barge.at - onset(speech, at)) * 1000)
    for pair in DOUBLE_BACKCHANNELS:
        speech = spaced(list(pair))
        for k, at in enumerate(offsets):
            run = simulate(agent, [(at, speech)], seconds=at + speech.size / 8000 + 2.0, settings=settings, seed=k)
            actions = run.actions()
            out["double_barges"].append(float(TurnAction.BARGE_IN in actions))
            out["double_flaps"].append(actions.count(TurnAction.RESUME))
    return out


def cpu(agent: np.ndarray, settings: TurnSettings) -> dict[str, float]:
    """µs of detector CPU per 20 ms frame in three situations."""
    speech = law(pcm(INTERRUPTIONS[1][0], INTERRUPTIONS[1][1]))
    talk = np.concatenate([speech] * 6)
    cases = {
        "agent speaking, caller silent": simulate(agent, [], seconds=10.0, settings=settings),
        "agent speaking, -10 dB echo": simulate(agent, [], seconds=10.0, echo_db=-10.0, settings=settings),
        "agent silent, caller talking": simulate(np.zeros(0), [(0.5, talk)], seconds=10.0, settings=settings),
    }
    return {name: run.cpu_s / run.frames * 1e6 for name, run in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offsets", type=int, default=12, help="caller sound start positions per clip")
    parser.add_argument("--sweep", action="store_true", help="sweep AGENT_MIN_INTERRUPTION_MS")
    args = parser.parse_args()
    agent = law(np.frombuffer(speech_pcm16(AGENT_TEXT, voice="en-us+f3"), "<i2").astype(np.float64))
    offsets = [1.5 + 0.37 * k for k in range(args.offsets)]  # across words and gaps of the answer
    print(f"# Turn-taking benchmark ({platform.processor() or platform.machine()}, Python {platform.python_version()})\n")

    print("| VAD | onset -> clear p50 / p99 ms | onset -> barge-in p50 / p99 ms | interruptions missed "
          "| false interruptions (noise set) | brief pauses | backchannels that interrupted |")
    print("|---|---|---|---|---|---|---|")
    for vad in ("silero", "energy"):
        settings = TurnSettings(vad=vad)
        r = reaction(agent, settings, offsets)
        trials, barges, pauses = false_interruptions(agent, settings, offsets[: max(3, args.offsets // 3)])
        bc_trials, bc_barges = backchannels(agent, settings, offsets[: max(3, args.offsets // 3)])
        n = len(r["clear"]) + len(r["missed"])
        print(f"| {vad} | {pct(r['clear'], 50):.0f} / {pct(r['clear'], 99):.0f} "
              f"| {pct(r['barge'], 50):.0f} / {pct(r['barge'], 99):.0f} | {len(r['missed'])} of {n} "
              f"| {barges} of {trials} ({100 * barges / trials:.1f} %) | {pauses} | {bc_barges} of {bc_trials} |")

    print(f"\n| VAD | speech in bursts {GAP_S * 1000:.0f} ms apart: barge-ins | resumes before the barge-in "
          "(trials with any) | first onset -> barge-in p50 / p99 ms | two backchannels that interrupted | their resumes |")
    print("|---|---|---|---|---|---|")
    for vad in ("silero", "energy"):
        b = bursts(agent, TurnSettings(vad=vad), offsets[: max(3, args.offsets // 2)])
        n = len(b["barge"]) + len(b["missed"])
        flapped = sum(1 for f in b["flaps"] if f)
        print(f"| {vad} | {len(b['barge'])} of {n} | {sum(b['flaps']):.0f} ({flapped} of {len(b['flaps'])}) "
              f"| {pct(b['barge'], 50):.0f} / {pct(b['barge'], 99):.0f} "
              f"| {sum(b['double_barges']):.0f} of {len(b['double_barges'])} | {sum(b['double_flaps']):.0f} |")

    print("\n| VAD | situation | µs per 20 ms frame | share of one core |")
    print("|---|---|---:|---:|")
    for vad in ("silero", "energy"):
        for name, us in cpu(agent, TurnSettings(vad=vad)).items():
            print(f"| {vad} | {name} | {us:.0f} | {us / 200:.2f} % |")

    if args.sweep:
        print("\n| VAD | min_interruption_ms (backchannels off) | false interruptions | brief pauses "
              "| interruptions confirmed | onset -> barge-in p50 ms |")
        print("|---|---:|---|---:|---|---:|")
        for vad in ("silero", "energy"):
            for ms in (100, 150, 200, 250, 300, 400):
                settings = TurnSettings(vad=vad, min_interruption_ms=ms, backchannel_ms=0)
                trials, barges, pauses = false_interruptions(agent, settings, offsets[:3])
                r = reaction(agent, settings, offsets[:4])
                n = len(r["clear"]) + len(r["missed"])
                p50 = statistics.median(r["barge"]) if r["barge"] else float("nan")
                print(f"| {vad} | {ms} | {barges} of {trials} | {pauses} | {len(r['barge'])} of {n} | {p50:.0f} |")


if __name__ == "__main__":
    main()
