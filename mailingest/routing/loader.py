"""Reading ``rules/*.toml``: every problem is reported as ``file:line: message``.

tomllib gives no positions for values, so a rule's line is the ``[[rule]]`` header before its
``name = "..."`` line in the file text; TOML syntax errors carry their own line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from mailingest.routing.conditions import compile_expr
from mailingest.routing.model import Rule

_TOML_LINE = re.compile(r"at line (\d+)")
_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    level: str = "error"  # error | warning

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.level}: {self.message}"


def rule_lines(text: str) -> list[int]:
    """1-based line of each ``[[rule]]`` header, in file order."""
    return [i + 1 for i, line in enumerate(text.splitlines()) if _HEADER.match(line)]


def load_file(file: Path) -> tuple[list[Rule], list[Problem]]:
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
        tree = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        return [], [Problem(name, 1, f"not UTF-8 text: {exc}")]
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        return [], [Problem(name, int(found.group(1)) if found else 1, f"not valid TOML: {exc}")]
    problems: list[Problem] = []
    unknown = set(tree) - {"rule"}
    if unknown:
        problems.append(
            Problem(name, 1, f"unknown top-level key(s) {sorted(unknown)}; rules go in [[rule]] tables")
        )
    raws = tree.get("rule", [])
    if not isinstance(raws, list):
        return [], [*problems, Problem(name, 1, "rule must be an array of tables: [[rule]]")]
    lines = rule_lines(text)
    rules: list[Rule] = []
    for index, raw in enumerate(raws):
        line = lines[index] if index < len(lines) else 1
        label = raw.get("name", index + 1)
        reserved = sorted(set(raw) & {"origin", "file", "line"})  # filled in here, never written
        if reserved:
            problems.append(
                Problem(name, line, f"rule {label}: {', '.join(reserved)}: extra inputs are not permitted")
            )
            continue
        try:
            rule = Rule.model_validate(
                {**raw, "origin": f"{file.name}#{index + 1}", "file": name, "line": line}
            )
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append(Problem(name, line, f"rule {label}: {loc}: {err['msg']}"))
            continue
        if rule.expr is not None:
            try:
                rule._program = compile_expr(rule.expr)
            except ValueError as exc:
                problems.append(Problem(name, line, f"rule {label}: expr: {exc}"))
                continue
        rules.append(rule)
    return rules, problems


def load_dir(path: Path) -> tuple[list[Rule], list[Problem]]:
    """Every ``*.toml`` under ``path`` (sorted by name), rules in priority order (stable)."""
    if not path.exists():
        return [], []
    files = [path] if path.is_file() else sorted(path.glob("*.toml"))
    rules: list[Rule] = []
    problems: list[Problem] = []
    for file in files:
        got, bad = load_file(file)
        rules.extend(got)
        problems.extend(bad)
    seen: dict[str, Rule] = {}
    for rule in rules:
        first = seen.setdefault(rule.name, rule)
        if first is not rule:
            problems.append(
                Problem(
                    str(rule.file),
                    rule.line or 1,
                    f"rule name {rule.name!r} is used more than once (first at {first.where})",
                )
            )
    return sorted(rules, key=lambda r: r.priority), problems


def snapshot(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, mtimes and sizes of the rule files: compared to notice edits."""
    if not path.exists():
        return ()
    files = [path] if path.is_file() else sorted(path.glob("*.toml"))
    out = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        out.append((file.name, st.st_mtime_ns, st.st_size))
    return tuple(out)
