"""Compiled builds of the call path's hot modules, used only while they match the source.

Most of a call's CPU is Python bytecode spread over small sans-I/O state machines: the turn
detector, the playout and pacing accounting, the Media Streams parser, the write batcher, and on
SIP calls the RTP path. These are fully typed, so mypyc (part of mypy) compiles them, unchanged,
into C extensions that run the same code with far less interpreter overhead (the load
benchmark's server: about 15 % less CPU per Twilio call, 12 % per SIP call; `AGENT_NATIVE=off`
against the default measures it). Since frames are handled where the socket reads them
(`websocket_read`), the bridge's per-frame paths are synchronous, so its synchronous half
(`call_core.CallCore`) is compiled too (11 % fewer instructions per call-second in the server);
its asyncio shell (`bridge.CallBridge`) stays Python, as no compiled module defines a coroutine
(`tests/test_native.py`). The sockets and the provider sessions gained nothing compiled and stay
Python. `C_MODULES` are the few whose
work is numpy calls on a few hundred samples, where numpy's fixed cost per call is most of it:
each has a C twin of its functions beside the source, which the build compiles as it is.

`scripts/build_native.py` (run by `make run` and `make test`) compiles `MODULES` and `C_MODULES`
into `build/native/<interpreter>/` beside the package and writes a stamp with each source file's
hash (a C twin's too), and the hash of every module of ours they import (their types are built in).
`enable()`, called when the package is first imported, puts an import finder in front of
the source for exactly those modules, and only when every hash still matches: a module edited
since the build is never shadowed by a stale one (the source runs, and a warning says so).
`AGENT_NATIVE=off` always runs the source. No build (an installed wheel, no C compiler): the
source runs, as it always could.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["BUILT_MODULES", "C_MODULES", "MODULES", "NativeFinder", "build_dir", "c_source_hashes", "check_build", "dependencies", "enable", "source_file", "source_hashes", "status"]

log = logging.getLogger(__name__)

# Typed, synchronous, never monkeypatched or subclassed outside; each is on the per-frame path (the
# recording modules on a recorded call's: every frame of both legs goes through them).
MODULES: tuple[str, ...] = (
    "telephony_agent.telephony.call_core",
    "telephony_agent.telephony.bridge_types",
    "telephony_agent.telephony.turns",
    "telephony_agent.telephony.speech_scorers",
    "telephony_agent.telephony.playout",
    "telephony_agent.telephony.pacing",
    "telephony_agent.telephony.loop_timer",
    "telephony_agent.telephony.token_bucket",
    "telephony_agent.telephony.twilio.stream",
    "telephony_agent.websocket_write",
    "telephony_agent.websocket_frames",
    "telephony_agent.telephony.sip.rtp",
    "telephony_agent.telephony.sip.jitter",
    "telephony_agent.telephony.sip.pacer",
    "telephony_agent.telephony.sip.pacing_grid",
    "telephony_agent.telephony.sip.dtmf",
    "telephony_agent.recording.format",
    "telephony_agent.recording.wav",
    "telephony_agent.recording.recorder",
)
# module -> its C twin (the same functions, the same results), relative to the checkout
C_MODULES: dict[str, str] = {
    "telephony_agent.telephony.energy": "telephony_agent/telephony/energy.c",
}
BUILT_MODULES: tuple[str, ...] = (*MODULES, *C_MODULES)  # every module the build makes
STAMP = "native.json"
ROOT = Path(__file__).resolve().parent.parent  # the directory holding the package (a checkout)

_status = "not enabled"


def build_dir(root: Path = ROOT) -> Path:
    """Where this interpreter's build lives: one per Python version (extensions are per ABI)."""
    return root / "build" / "native" / sys.implementation.cache_tag


def source_file(name: str, root: Path = ROOT) -> Path:
    """The source of one of our modules (or packages): `telephony_codecs` lives under `codecs/`."""
    base = root / "codecs" if name.split(".")[0] == "telephony_codecs" else root
    path = base / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def source_hashes(modules: Sequence[str] = MODULES, root: Path = ROOT) -> dict[str, str]:
    """SHA-256 of each module's source file, by module name."""
    return {name: hashlib.sha256(source_file(name, root).read_bytes()).hexdigest() for name in modules}


def c_source_hashes(root: Path = ROOT) -> dict[str, str]:
    """SHA-256 of each C twin (`C_MODULES`), by its path."""
    return {path: hashlib.sha256((root / path).read_bytes()).hexdigest() for path in C_MODULES.values()}


OURS = ("telephony_agent", "telephony_codecs")


def dependencies(modules: Sequence[str], root: Path = ROOT) -> list[str]:
    """`modules` and every module of ours they import, directly or not (mypyc builds their types
    into the compiled code, so a change to any of them makes the build stale)."""
    seen: list[str] = []
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = source_file(name, root)
        if name in seen or not path.is_file():
            continue
        seen.append(name)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                    if node.level else (node.module or "")
                found = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            todo += [n for n in found if n.split(".")[0] in OURS]
    return sorted(seen)


class NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension for each module it was given (and the shared library the
    extensions import), nothing else."""

    def __init__(self, files: dict[str, Path], root: Path) -> None:
        self.files = files
        self.root = root

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def status() -> str:
    """What `enable()` found: "enabled (N modules)", "off", "no build", "stale: ...", ..."""
    return _status


def check_build(root: Path = ROOT) -> tuple[dict[str, Path], str]:
    """The files of this interpreter's build by module name (and the shared library's), and ""
    when they may be used; else nothing and why not ("no build", "stale: ...", ...)."""
    where = build_dir(root)
    try:
        stamp = json.loads((where / STAMP).read_text())
    except (OSError, ValueError):
        return {}, "no build"
    if not isinstance(stamp, dict):
        return {}, "no build"
    built, sources, c_sources = stamp.get("modules", {}), stamp.get("sources", {}), stamp.get("c_sources", {})
    if set(built) != set(BUILT_MODULES) or not set(BUILT_MODULES) <= set(sources):
        return {}, "stale: the build is of other modules"
    # the compiled modules and every module of ours they import, directly or not: the compiled
    # code was built against their types
    try:
        current = source_hashes(list(sources), root)
        current_c = c_source_hashes(root)
    except OSError as exc:
        return {}, f"no source to check against ({exc.__class__.__name__})"
    changed = [name for name in sources if sources[name] != current[name]]
    changed += [path for path in current_c if c_sources.get(path) != current_c[path]]
    if changed:
        return {}, "stale: " + ", ".join(changed) + " changed since the build"
    files = {name: where / entry["file"] for name, entry in {**built, **stamp.get("libraries", {})}.items()}
    if not all(f.is_file() for f in files.values()):
        return {}, "incomplete build"
    return files, ""


def enable(root: Path = ROOT) -> bool:
    """Use the compiled modules if there is a build for this interpreter that matches the
    source, none of them is imported yet, and `AGENT_NATIVE` is not `off`."""
    global _status
    if os.environ.get("AGENT_NATIVE", "auto").strip().lower() == "off":  # any other value: Settings refuses it
        _status = "off"
        return False
    if any(isinstance(f, NativeFinder) and f.root == root for f in sys.meta_path):
        return True  # already (the package's import did it)
    files, problem = check_build(root)
    if problem == "no build":
        _status = problem
        return False
    if not problem and any(name in sys.modules for name in BUILT_MODULES):
        problem = "too late: the source modules are already imported"
    if problem:
        _status = problem
        log.warning("compiled modules not used (%s): running the Python source; `make native` rebuilds them", problem)
        return False
    sys.meta_path.insert(0, NativeFinder(files, root))
    _status = f"enabled ({len(BUILT_MODULES)} modules)"
    return True
