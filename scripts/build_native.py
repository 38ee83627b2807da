#!/usr/bin/env python3
"""Compile the call path's hot modules with mypyc, and their C twins (`make native`; `make run` and `make test` run it).

The modules are `telephony_agent.native.MODULES`; the extensions go to
`build/native/<interpreter>/` with a stamp of each source's SHA-256, which
`telephony_agent.native.enable()` checks before it uses them. The source tree is not touched:
no `.so` lands beside a `.py`, so an edited module can never be shadowed by an old build.

    .venv/bin/python scripts/build_native.py          # build (a few tens of seconds)
    .venv/bin/python scripts/build_native.py --check  # exit 0 if the build matches the source

Needs mypy and setuptools (the `native` extra) and a C compiler. Exit status 1 with a
one-line reason when it cannot build: the server then runs the Python source, as it always can.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["AGENT_NATIVE"] = "off"  # this process checks the build itself: no warning about it

from telephony_agent.native import (  # noqa: E402
    BUILT_MODULES,
    C_MODULES,
    MODULES,
    STAMP,
    build_dir,
    c_source_hashes,
    check_build,
    dependencies,
    source_file,
    source_hashes,
)

GROUP = "telephony_agent_native"  # the shared library's name (mypyc's default is a hash of the modules)


def build(where: Path, jobs: int) -> None:
    from mypyc.build import mypycify
    from setuptools import Extension, setup

    # before compiling: an edit made meanwhile makes the stamp stale
    hashes = source_hashes(dependencies(BUILT_MODULES))
    c_hashes = c_source_hashes()
    sources = [str(source_file(m)) for m in MODULES]
    with tempfile.TemporaryDirectory(prefix="native-") as tmp:
        tmp_path = Path(tmp)
        # mypy's settings for the compile: the project's, with absolute paths (it runs in `tmp`,
        # away from pyproject.toml, whose [project] table setuptools would otherwise read)
        config = tmp_path / "mypy.ini"
        config.write_text(
            "[mypy]\npython_version = {}.{}\nignore_missing_imports = True\nmypy_path = {}\n"
            "explicit_package_bases = True\n".format(*sys.version_info[:2], ROOT / "codecs")
        )
        staging = tmp_path / "out"
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            extensions = mypycify(
                [f"--config-file={config}", *sources], opt_level="3", group_name=GROUP, target_dir=str(tmp_path / "c")
            )
            # the C twins as they are; no fused multiply-add, so each operation rounds as numpy's does
            extensions += [Extension(name, [str(ROOT / path)], extra_compile_args=["-O3", "-ffp-contract=off"])
                           for name, path in C_MODULES.items()]
            try:
                setup(
                    name=GROUP,
                    ext_modules=extensions,
                    script_args=["-q", "build_ext", "--build-lib", str(staging), "--build-temp", str(tmp_path / "o"),
                                 "--parallel", str(jobs)],
                )
            except SystemExit as exc:  # setuptools exits on a compiler error
                raise RuntimeError(f"the C compiler failed: {exc}") from None
        finally:
            os.chdir(cwd)
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        modules = {}
        for name in BUILT_MODULES:
            rel = name.replace(".", "/") + suffix
            if not (staging / rel).is_file():
                raise RuntimeError(f"the build made no {rel}")
            modules[name] = {"file": rel}
        libraries = {f"{GROUP}__mypyc": {"file": f"{GROUP}__mypyc{suffix}"}}
        if not (staging / libraries[f"{GROUP}__mypyc"]["file"]).is_file():
            raise RuntimeError("mypyc built no shared library")
        stamp = {"python": sys.version.split()[0], "modules": modules, "libraries": libraries, "sources": hashes,
                 "c_sources": c_hashes}
        (staging / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        if where.exists():
            shutil.rmtree(where)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(where))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say whether the build matches the source")
    p.add_argument("--force", action="store_true", help="build even if the build matches the source")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="C files compiled at once")
    args = p.parse_args()
    where = build_dir()
    problem = check_build()[1]
    if args.check:
        print(f"{where}: {problem or 'matches the source'}")
        return 1 if problem else 0
    if not problem and not args.force:
        print(f"{where}: up to date")
        return 0
    started = time.monotonic()
    try:
        build(where, args.jobs)
    except Exception as exc:  # noqa: BLE001 - any failure: the source still runs
        runs = "the build already there" if not check_build()[1] else "the Python source"
        print(f"native build failed ({exc.__class__.__name__}: {exc}); the server runs {runs}", file=sys.stderr)
        return 1
    print(f"{where}: {len(BUILT_MODULES)} modules compiled in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
