"""The detector's energy arithmetic (`telephony/energy.py`) and its C twin (`energy.c`): the same
results bit for bit, the same writes, the same refusals of indices outside the buffers."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from test_native import CAN_BUILD

from telephony_agent import native

NAME = "telephony_agent.telephony.energy"


def _source() -> ModuleType:
    # beside the compiled twin, under a name of its own in the same package (its imports are relative)
    spec = importlib.util.spec_from_file_location(f"{NAME}_source", native.source_file(NAME))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiled() -> ModuleType:
    files, problem = native.check_build()
    if problem:
        if CAN_BUILD:
            pytest.fail(f"no build matching the source: run `make native` ({problem})")
        pytest.skip("no C compiler: the source is all there is")
    loader = importlib.machinery.ExtensionFileLoader(NAME, str(files[NAME]))
    spec = importlib.util.spec_from_file_location(NAME, files[NAME], loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    return _source(), _compiled()


def _pcm16(rng: np.random.Generator, n: int, scale: float) -> bytes:
    x = rng.normal(0, scale, n)
    x[rng.random(n) < 0.02] = rng.choice([-32768.0, 32767.0])  # full scale both ways
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def _both(twins: tuple[ModuleType, ModuleType], fn: str, *args: Any) -> tuple[Any, Any]:
    """`fn` of each twin, each on its own copy of every array argument; the copies must end equal."""
    out = []
    copies = []
    for module in twins:
        mine = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        out.append(getattr(module, fn)(*mine))
        copies.append([a for a in mine if isinstance(a, np.ndarray)])
    for a, b in zip(*copies, strict=True):
        assert np.array_equal(a, b)
    return out[0], out[1]


def test_the_twins_agree_bit_for_bit(twins: tuple[ModuleType, ModuleType]) -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        w = int(rng.integers(1, 700))
        n = int(rng.choice([0, 1, 160, 256, int(rng.integers(0, 2 * w + 2))]))
        pcm = _pcm16(rng, n + int(rng.integers(0, 3)), float(rng.choice([3.0, 300.0, 30000.0])))
        ring = rng.normal(0, 100, w)
        at = int(rng.integers(0, w))
        for data in (pcm, bytearray(pcm), memoryview(pcm)[: 2 * n]):
            py, c = _both(twins, "ring_write", data, n, ring, at)
            assert py == c and type(c) is float
        size = int(rng.integers(n, n + 500))
        skip = int(rng.integers(0, n + 1))
        a = int(rng.integers(0, size - (n - skip) + 1))
        ref = rng.normal(0, 100, size).astype(np.float32)
        py, c = _both(twins, "place", pcm, n, skip, ref, a, a + n - skip)
        assert py == c
        cell = int(rng.choice([1, 8, 16]))
        cells = np.zeros(size // cell)
        i0 = int(rng.integers(0, cells.size + 1))
        i1 = int(rng.integers(i0, cells.size + 1))
        integral = np.rint(ref)  # as the reference holds: PCM16 samples
        _both(twins, "cell_energies", integral.astype(np.float32), cells, i0, i1, cell)
        e = np.rint(rng.gamma(0.5, 1e6, int(rng.integers(0, 300))))
        lo = int(rng.integers(0, e.size + 1))
        hi = int(rng.integers(lo, e.size + 1))
        k = int(rng.integers(1, 40))
        py, c = _both(twins, "loudest_sum", e, lo, hi, k)
        assert py == c


def test_what_the_functions_compute(twins: tuple[ModuleType, ModuleType]) -> None:
    """Against the arithmetic written out, for both twins: a ring that wraps, and one given more
    than it holds, a placement that skips the samples before the buffer starts."""
    pcm = np.arange(-5, 5, dtype="<i2").tobytes()  # -5 .. 4
    for module in twins:
        ring = np.zeros(4)
        assert module.ring_write(pcm, 3, ring, 2) == (25 + 16 + 9) / 3
        assert ring.tolist() == [-3, 0, -5, -4]
        assert module.ring_write(pcm, 10, ring, 1) == 85 / 10  # samples 6..9 land at slots (1 + i) % 4
        assert ring.tolist() == [2, 3, 4, 1]
        ref = np.full(6, 7.0, dtype=np.float32)
        assert module.place(pcm, 4, 1, ref, 2, 5) == (25 + 16 + 9 + 4) / 4
        assert ref.tolist() == [7, 7, -4, -3, -2, 7]
        cells = np.zeros(3)
        module.cell_energies(ref, cells, 1, 3, 2)
        assert cells.tolist() == [0, 16 + 9, 4 + 49]
        e = np.array([1.0, 5, 2, 8, 0, 3])
        assert module.loudest_sum(e, 0, 6, 2) == 10
        assert module.loudest_sum(e, 4, 6, 3) == 3  # fewer than k: all of them
        assert module.loudest_sum(e, 2, 2, 3) == 0


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("ring_write", (b"\0" * 10, 6, np.zeros(4), 0)),  # more samples than bytes
        ("ring_write", (b"\0" * 10, 2, np.zeros(4), 4)),  # slot outside the ring
        ("ring_write", (b"\0" * 10, -1, np.zeros(4), 0)),
        ("place", (b"\0" * 10, 5, 0, np.zeros(4, np.float32), 0, 5)),  # past the buffer's end
        ("place", (b"\0" * 10, 5, 2, np.zeros(4, np.float32), 0, 2)),  # sizes differ
        ("place", (b"\0" * 10, 5, 6, np.zeros(4, np.float32), 0, 0)),
        ("cell_energies", (np.zeros(8, np.float32), np.zeros(2), 0, 3, 4)),  # more cells than `out`
        ("cell_energies", (np.zeros(8, np.float32), np.zeros(4), 0, 3, 4)),  # more than the samples
        ("cell_energies", (np.zeros(8, np.float32), np.zeros(4), 0, 1, 0)),
        ("loudest_sum", (np.zeros(4), 0, 5, 2)),
        ("loudest_sum", (np.zeros(4), 3, 2, 2)),
        ("loudest_sum", (np.zeros(4), 0, 4, 0)),
    ],
)
def test_indices_outside_the_buffers_are_refused(twins: tuple[ModuleType, ModuleType], fn: str,
                                                 args: tuple[Any, ...]) -> None:
    for module in twins:
        with pytest.raises(ValueError):
            getattr(module, fn)(*args)


def test_the_c_twin_refuses_arrays_of_another_type(twins: tuple[ModuleType, ModuleType]) -> None:
    """It reads the buffers as they are: an array of another type, or one that cannot be
    written, is refused, not misread."""
    compiled = twins[1]
    with pytest.raises(TypeError):
        compiled.ring_write(b"\0" * 4, 2, np.zeros(4, np.float32), 0)
    with pytest.raises(TypeError):
        compiled.place(b"\0" * 4, 2, 0, np.zeros(4), 0, 2)
    with pytest.raises(TypeError):
        compiled.cell_energies(np.zeros(8), np.zeros(2), 0, 1, 4)
    with pytest.raises(TypeError):
        compiled.loudest_sum(np.zeros(4, np.float32), 0, 4, 2)
    with pytest.raises((TypeError, ValueError, BufferError)):
        compiled.ring_write(b"\0" * 4, 2, np.zeros(8)[::2], 0)  # not contiguous
    frozen = np.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises((TypeError, ValueError, BufferError)):
        compiled.ring_write(b"\0" * 4, 2, frozen, 0)
    with pytest.raises(TypeError):
        compiled.ring_write(b"\0" * 4, 2, np.zeros(4))
