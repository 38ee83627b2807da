"""The compiled (mypyc) hot modules: used only when built from the very source, and the same
decisions as the source."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from telephony_agent import native

REPO = Path(__file__).resolve().parent.parent
CAN_BUILD = importlib.util.find_spec("mypyc") is not None and any(shutil.which(cc) for cc in ("cc", "gcc"))


def _fake_checkout(root: Path, *, stale: str | None = None, files: bool = True) -> Path:
    """A checkout with each module's source (and C twin) and a build stamped with their hashes
    (`stale`: that module's or C twin's hash is wrong); `files`: the extension files exist."""
    names = native.BUILT_MODULES
    for name in names:
        src = native.source_file(name, root)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"# {name}\n")
    for path in native.C_MODULES.values():
        (root / path).write_text(f"/* {path} */\n")
    hashes = native.source_hashes(names, root)
    c_hashes = native.c_source_hashes(root)
    where = native.build_dir(root)
    where.mkdir(parents=True)
    modules = {}
    for name in names:
        rel = name.replace(".", "/") + ".so"
        modules[name] = {"file": rel}
        if files:
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_bytes(b"")
    if stale is not None:
        (c_hashes if stale in c_hashes else hashes)[stale] = "0" * 64
    (where / native.STAMP).write_text(json.dumps({"modules": modules, "libraries": {}, "sources": hashes,
                                                   "c_sources": c_hashes}))
    return root


@pytest.fixture(autouse=True)
def _keep_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this process itself runs stays reported as it was; the suite may run with
    `AGENT_NATIVE=off`, which these tests set themselves where they mean it."""
    monkeypatch.setattr(native, "_status", native.status())
    monkeypatch.delenv("AGENT_NATIVE", raising=False)


def test_no_build_runs_the_source(tmp_path: Path) -> None:
    assert native.enable(tmp_path) is False
    assert native.status() == "no build"


def test_a_module_edited_since_the_build_is_not_shadowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    edited = native.MODULES[0]
    assert native.enable(_fake_checkout(tmp_path, stale=edited)) is False
    assert native.status() == f"stale: {edited} changed since the build"
    assert "running the Python source" in caplog.text


def test_a_c_twin_edited_since_the_build_is_not_shadowed(tmp_path: Path) -> None:
    edited = next(iter(native.C_MODULES.values()))
    assert native.enable(_fake_checkout(tmp_path, stale=edited)) is False
    assert native.status() == f"stale: {edited} changed since the build"


def test_a_build_missing_files_is_not_used(tmp_path: Path) -> None:
    assert native.enable(_fake_checkout(tmp_path, files=False)) is False
    assert native.status() == "incomplete build"


def test_a_matching_build_is_not_used_once_the_source_is_imported(tmp_path: Path) -> None:
    """This process imported the modules already (from source or from the real build): a second
    finder must not load other copies beside them."""
    import telephony_agent.telephony.turns  # noqa: F401

    assert native.enable(_fake_checkout(tmp_path)) is False
    assert native.status() == "too late: the source modules are already imported"


def test_a_change_to_a_module_the_compiled_ones_import_makes_the_build_stale() -> None:
    """The stamp covers what the compiled code was built against: the modules it imports, however
    (relative, from a package, within functions), and what those import in turn."""
    deps = native.dependencies(native.MODULES)
    assert set(native.MODULES) <= set(deps)
    assert "telephony_agent.telephony.silero" in deps  # `from .silero import ...` in speech_scorers
    assert "telephony_codecs.resample" in deps  # through the `telephony_codecs` package
    assert "telephony_agent.telephony.calls" not in deps  # nothing compiled imports it
    assert "telephony_agent.telephony.bridge" not in deps  # the core's shell: the core only names its protocol


# Records made for every frame of a call, compiled or not.
PER_FRAME_RECORDS = (
    "telephony_agent.telephony.twilio.stream:Media",
    "telephony_agent.telephony.twilio.stream:MarkEcho",
    "telephony_agent.realtime.types:AudioChunk",
    "telephony_agent.realtime.events:AudioDelta",
)


@pytest.mark.parametrize("where", PER_FRAME_RECORDS)
def test_records_made_for_every_frame_have_their_own_init(where: str) -> None:
    """The `__init__` `dataclass` writes is Python even in a compiled module, and for a frozen
    class it sets each field through `object.__setattr__`: about 0.4 us a record, 1-2 % of the
    core at 500 calls for each of these. Theirs is written out (and compiled with the module)."""
    module, name = where.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert cls.__init__.__qualname__ == f"{name}.__init__", "a dataclass-generated __init__"
    assert not cls.__dataclass_params__.frozen

def test_no_compiled_module_defines_a_coroutine() -> None:
    """mypyc hands a cancellation on to what a compiled coroutine awaits with the three-argument
    `throw()`, deprecated since Python 3.12 (mypyc/mypyc#1214): the compiled modules stay
    synchronous, and their waits live in plain modules (`websocket_drain`, the call core's in
    its shell, `bridge`)."""
    found = []
    for name in native.MODULES:
        tree = ast.parse(native.source_file(name).read_text())
        found += [f"{name}.{node.name}" for node in ast.walk(tree) if isinstance(node, ast.AsyncFunctionDef)]
    assert found == []


def _self_attribute(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def narrowed_reads_after_calls(tree: ast.AST) -> list[tuple[str, int]]:
    """`self.x = None` (or `if self.x is None:`), then, in the same block, a statement with a
    call, then a later statement that reads `self.x`: mypy keeps `self.x` narrowed to None across
    the call, so mypyc compiles that read as a cast to None, which raises if the call set it."""
    found: list[tuple[str, int]] = []

    def block(stmts: list[ast.stmt], narrowed: set[str]) -> None:
        narrowed = set(narrowed)
        called: set[str] = set()  # narrowed attributes a call has run past since
        for stmt in stmts:
            reads = {a for n in ast.walk(stmt) if isinstance(getattr(n, "ctx", None), ast.Load)
                     and (a := _self_attribute(n)) is not None}
            for attr in sorted(reads & called):
                found.append((attr, stmt.lineno))
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and stmt.value.value is None:
                narrowed |= {a for t in stmt.targets if (a := _self_attribute(t)) is not None}
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                narrowed -= {a for t in targets if (a := _self_attribute(t)) is not None}
                called -= {a for t in targets if (a := _self_attribute(t)) is not None}
            if any(isinstance(n, ast.Call) for n in ast.walk(stmt)):
                called |= narrowed
            inner = set(narrowed)
            if isinstance(stmt, ast.If):
                test = stmt.test
                if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Is)
                        and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None
                        and (a := _self_attribute(test.left)) is not None):
                    inner.add(a)
            for field in ("body", "orelse", "finalbody"):
                child = getattr(stmt, field, None)
                if isinstance(child, list) and child and isinstance(child[0], ast.stmt):
                    block(child, inner if field == "body" else narrowed)
            for handler in getattr(stmt, "handlers", []):
                block(handler.body, narrowed)

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            block(node.body, set())
    return found


def test_no_compiled_module_reads_an_attribute_narrowed_to_none_after_a_call() -> None:
    """The compiled call timer re-armed itself through `handle_timer`, then tested its handle it
    had set to None before the call: the compiled test raised on most fires (a traceback logged
    each time, 5-7 points of a core at 450 calls). Read such an attribute through a method, or
    do not read it (`loop_timer.CallTimer._fire`)."""
    found = []
    for name in native.MODULES:
        tree = ast.parse(native.source_file(name).read_text())
        found += [f"{name}:{line} self.{attr}" for attr, line in narrowed_reads_after_calls(tree)]
    assert found == []


def test_the_narrowing_check_finds_the_timer_as_it_was() -> None:
    before = """
class CallTimer:
    def _fire(self) -> None:
        self._handle = None
        try:
            self._bridge.handle_timer(0.0)
        except Exception:
            pass
        if self._handle is None:
            self.update()

    def fine(self) -> None:
        if self._handle is None:
            return
        self._handle = None
        self.cancel()
        self._handle = self.make()
        self._handle.use()
"""
    assert narrowed_reads_after_calls(ast.parse(before)) == [("_handle", 9)]


def test_the_compiled_call_core_awaits_only_through_its_shell() -> None:
    """`CallCore` is compiled and defines no coroutine: what awaits it asks of `CallShell`, which
    `CallBridge` (plain) implements with coroutine functions. Every shell member the core calls
    must be in the protocol, each member returning a coroutine must be a coroutine function of the
    bridge, and the core must not import the bridge (the two would be an import cycle)."""
    from telephony_agent.telephony.bridge import CallBridge
    from telephony_agent.telephony.call_core import CallShell

    tree = ast.parse(native.source_file("telephony_agent.telephony.call_core").read_text())
    asked = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "_shell"
    }
    protocol = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CallShell")
    members = {f.name: f for f in protocol.body if isinstance(f, ast.FunctionDef)}
    assert {"spawn", "send_chunk", "decided_then_send", "on_turns", "on_dead_air", "close_down"} <= asked
    assert asked <= set(members) == {m for m in dir(CallShell) if not m.startswith("_")}
    coroutines = {name for name, f in members.items() if f.returns is not None and "Coroutine" in ast.unparse(f.returns)}
    assert coroutines == {"send_chunk", "decided_then_send", "on_turns", "on_dead_air", "close_down"}
    for name in coroutines:
        assert inspect.iscoroutinefunction(getattr(CallBridge, name)), name
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "telephony_agent.telephony.bridge" not in imported
    assert "telephony_agent.telephony.call_core" in native.MODULES
    assert "telephony_agent.telephony.bridge" not in native.MODULES


def test_native_off_runs_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_NATIVE", "off")
    assert native.enable() is False
    assert native.status() == "off"


_SCENARIO = """
import json, numpy as np
import telephony_agent.telephony.turns as turns
import telephony_agent.telephony.energy as energy
from telephony_agent.testing.turn_sim import AGENT_TEXT, law, simulate
from telephony_agent.testing.speech import speech_pcm16
pcm = lambda text: np.frombuffer(speech_pcm16(text), "<i2").astype(np.float64)
agent = law(pcm(AGENT_TEXT))
out = {"file": turns.__file__, "energy": energy.__file__, "runs": []}
for caller, kwargs in [
    ([(3.0, pcm("wait, stop, I have a different question"))], {}),
    ([(2.5, pcm("mhm"))], {"echo_db": -12.0}),
    ([(2.0, pcm("no no, that is not what I asked"))], {"echo_db": -10.0, "echo_moves": ((2.5, 190),)}),
    ([], {"echo_db": -6.0, "jitter_s": 0.03}),
]:
    det = turns.TurnDetector(turns.TurnSettings(vad="energy"))
    run = simulate(agent, caller, seconds=6.0, detector=det, **kwargs)
    out["runs"].append([[d.action.value, round(d.at, 6), d.onset and round(d.onset, 6), d.source, d.voiced_ms, d.reason]
                        for d in run.decisions] + [det.echo.delay, det.echo.searches, round(det.echo.ncc, 9)])
print(json.dumps(out))
"""


def _scenario(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _SCENARIO], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.skipif(not CAN_BUILD, reason="no mypyc or C compiler: the source is all there is")
def test_the_compiled_detector_decides_exactly_as_the_source() -> None:
    """`make test` builds the modules first; they are then what every test's server runs. Here the
    turn simulator runs both ways on the same calls (barge-in, backchannel over echo, a moving
    echo path, jitter): the same decisions at the same times, the same echo path found."""
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "build_native.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"no build matching the source: run `make native` ({check.stdout.strip()})"
    env = {k: v for k, v in os.environ.items() if k != "AGENT_NATIVE"}
    compiled = _scenario(env)
    source = _scenario({**env, "AGENT_NATIVE": "off"})
    assert str(compiled["file"]).endswith(".so") and str(source["file"]).endswith(".py")
    assert str(compiled["energy"]).endswith(".so") and str(source["energy"]).endswith(".py")  # the C twin
    assert compiled["runs"] == source["runs"]
    assert any(run[:-3] for run in source["runs"])  # type: ignore[union-attr, index]  # decisions were made
