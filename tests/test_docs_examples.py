"""Every fenced ``sh``, ``python`` and ``js`` example in docs/api.md and docs/api-auth.md runs
against a real daemon (``mailingest serve --sandbox``) and must exit 0.

``http://127.0.0.1:8025`` in a block becomes the sandbox's address and ``$MAILINGEST_KEY`` its
admin key (in sh blocks as text; python/js blocks also get ``MAILINGEST_KEY`` in their
environment). Blocks also see the sandbox's ``MI_*`` credentials and ``MAILINGEST_STORAGE__URL``
(so ``mailingest`` CLI examples act on the sandbox's database), with the venv's ``bin`` first on
``PATH``. A missing docs file contributes no blocks; ``console``/``toml``/``json`` blocks are
illustrations and are not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_api_openapi import ROOT, Sandbox, start_sandbox, stop_sandbox

DOCS = ("docs/api.md", "docs/api-auth.md")
RUNNERS = {
    "sh": "sh",
    "bash": "sh",
    "shell": "sh",
    "python": "python",
    "py": "python",
    "js": "js",
    "javascript": "js",
}
FENCE = re.compile(r"^```([\w-]+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
DOC_URL = "http://127.0.0.1:8025"


def blocks() -> list[tuple[str, int, str, str]]:
    """(file, line, kind, code) of every runnable block present."""
    found = []
    for name in DOCS:
        path = ROOT / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            kind = RUNNERS.get(match.group(1).lower())
            if kind:
                found.append((name, text.count("\n", 0, match.start()) + 1, kind, match.group(2)))
    return found


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    running = start_sandbox(tmp_path_factory.mktemp("docs"))
    yield running
    stop_sandbox(running)


def test_docs_have_examples_in_every_language() -> None:
    kinds = {kind for name, _line, kind, _code in blocks() if name == "docs/api-auth.md"}
    assert kinds == {"sh", "python", "js"}


def test_every_docs_example_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    found = blocks()
    assert len(found) >= 8
    key = sandbox.values["MI_ADMIN_KEY"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    base_env.update(sandbox.values)
    base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
    failures = []
    for index, (name, line, kind, code) in enumerate(found):
        code = (
            code.replace(DOC_URL, sandbox.url)
            .replace("$MAILINGEST_KEY", key)
            .replace("${MAILINGEST_KEY}", key)
        )
        env = dict(base_env)
        if kind == "sh":
            command = ["bash", "-euo", "pipefail", "-c", code]
        elif kind == "python":
            env["MAILINGEST_KEY"] = key
            command = [sys.executable, "-c", code]
        else:
            env["MAILINGEST_KEY"] = key
            script = tmp_path / f"example{index}.mjs"  # ES module: top-level await
            script.write_text(code)
            command = ["/usr/bin/node", str(script)]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            output = result.stdout[-800:] + result.stderr[-1500:]
            failures.append(f"{name}:{line} ({kind}) exit {result.returncode}\n{output}")
    assert not failures, "\n\n".join(failures)
