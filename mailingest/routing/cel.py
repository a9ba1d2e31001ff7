"""CEL ``expr`` conditions through cel-python (``celpy``), made cheap enough for real rule sets.

* Each expression is parsed when the rules load and **transpiled to Python once** (celpy's
  ``Transpiler``, the engine behind its ``CompiledRunner``); evaluating it runs a code object.
  An expression the transpiler cannot handle, and any evaluation where the transpiled code
  meets an error, go to celpy's tree interpreter, so results and errors stay the interpreter's.
  The transpiled ``has()`` is patched to yield a CEL bool (celpy 0.5 yields a Python bool that
  ``&&`` rejects — the other reason the first try failed).
* The invoice is converted to CEL types **once per invoice** and loaded into **one** celpy
  ``Activation`` shared by every rule (``CelInput``); celpy's runners clone the activation and
  reload every variable on each evaluation.
* celpy keeps a single lark parser per process, built with the tree class of whichever
  ``Environment`` came first; the transpiler needs ``TranspilerTree`` nodes (which the
  interpreter accepts as well), so ``_parse`` rebuilds the parser when another ``Environment``
  got there first. That was the "CompiledRunner fails" of the first try.
* The transpiled code's globals are a per-thread copy of ``celpy.evaluation``'s module globals:
  celpy itself writes ``base_activation`` / ``CEL`` into the shared module dict, which two
  threads routing at once would trample.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from types import CodeType
from typing import Any

import celpy
import celpy.evaluation
from celpy.celparser import CELParser
from celpy.evaluation import Activation, CELEvalError, NameContainer, Transpiler, TranspilerTree
from pydantic import BaseModel

_ENV = celpy.Environment(runner_class=celpy.CompiledRunner)
_NAME = NameContainer.extended_name_path
_local = threading.local()
# celpy's transpiled has() yields a Python bool, which its && / || refuse ("no such overload"):
_HAS = re.compile(
    r"^(ex_\d+ = lambda activation: )(not isinstance\(celpy\.evaluation\.result\(.*CELEvalError\))$", re.M
)


def _parse(expr: str) -> Any:
    ast = _ENV.compile(expr)
    if not isinstance(ast, TranspilerTree):
        CELParser.CEL_PARSER = None  # another Environment built the shared parser with lark.Tree
        _ENV.cel_parser = CELParser(tree_class=TranspilerTree)
        ast = _ENV.compile(expr)
    return ast


def _base_activation() -> Activation:
    """What ``Runner.new_activation`` builds: the environment's annotations, standard functions."""
    return Activation(package=_ENV.package, annotations=_ENV.annotations, functions=None)


_BASE = _base_activation()


def _globals() -> dict[str, Any]:
    namespace: dict[str, Any] | None = getattr(_local, "namespace", None)
    if namespace is None:
        namespace = _local.namespace = dict(celpy.evaluation.result.__globals__)
    return namespace


class _Activation(Activation):
    """celpy's ``Activation`` with the invoice's variables also in a plain dict: transpiled code
    reads ``activation.<name>``, and celpy's ``__getattr__`` spends most of its time building
    ``typing.Union`` objects for a ``cast``. Names not in the dict (functions, type names, macro
    variables in nested activations) resolve as celpy does."""

    _vars: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_vars"][name]
        except KeyError:
            return Activation.__getattr__(self, name)

    get = __getattr__


class CelInput:
    """One invoice as CEL sees it: every top-level key a variable, ``invoice`` the whole."""

    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context
        self._activation: Activation | None = None

    @property
    def activation(self) -> Activation:
        if self._activation is None:
            activation = _Activation()
            activation.identifiers = _BASE.identifiers.clone()
            activation.functions = _BASE.functions.copy()
            activation.package = _BASE.package
            activation.identifiers.load_values(self.context)
            activation._vars = {k: v for k, v in self.context.items() if "." not in k}
            self._activation = activation
        return self._activation


class CelProgram:
    """A compiled expression: ``evaluate(CelInput)`` returns the CEL value or raises."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.code: CodeType | None = None
        ast = _parse(expr)  # syntax errors propagate: the rule file is wrong
        self.interpreted = celpy.InterpretedRunner(_ENV, _parse(expr))
        try:
            transpiler = Transpiler(ast=ast, activation=_base_activation())
            transpiler.transpile()
            source = _HAS.sub(r"\1celpy.celtypes.BoolType(\2)", transpiler.source_text)
            self.code = compile(source, f"<cel {expr[:60]}>", "exec")
        except Exception:  # noqa: BLE001 - a transpiler gap: interpret this expression instead
            self.code = None

    @property
    def compiled(self) -> bool:
        return self.code is not None

    def evaluate(self, data: CelInput) -> Any:
        """The CEL value; an error the transpiled code meets is checked with the interpreter
        (celpy's reference semantics), which answers or raises."""
        if self.code is not None:
            namespace = _globals()
            namespace["base_activation"] = data.activation
            try:
                exec(self.code, namespace)  # celpy's own transpiled CEL, never user Python
                value = namespace.pop("CEL")
            except Exception:  # noqa: BLE001 - re-evaluated by the interpreter below
                value = None
            else:
                if not isinstance(value, CELEvalError):
                    return value
        return self.interpreted.evaluate(data.context)


def compile_expr(expr: str) -> CelProgram:
    """A CEL program; raises ``ValueError`` with the parser's message for a bad expression."""
    try:
        return CelProgram(expr)
    except Exception as exc:
        column = getattr(exc, "column", None)
        where = f" at column {column}" if column else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"bad CEL expression{where}: {first}") from exc


def _numbers(value: Any) -> Any:
    """The invoice with its decimals as numbers (JSON carries them as strings; CEL compares
    numbers). Walks the model itself: its serializer would turn decimals into strings."""
    if isinstance(value, BaseModel):
        out = {}
        for name, info in type(value).model_fields.items():
            item = getattr(value, name)
            if item is not None:
                out[info.alias or name] = _numbers(item)
        return out
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    return value


def _overlay(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _overlay(base.get(k), v) for k, v in top.items()}}
    if isinstance(base, list) and isinstance(top, list) and len(base) == len(top):
        return [_overlay(b, t) for b, t in zip(base, top, strict=True)]
    return top


def cel_input(data: dict[str, Any], numbers: Any) -> CelInput:
    """Every top-level key of ``data`` is a CEL variable (``totals``, ``vendor`` ...), and
    ``invoice`` is the whole thing. ``numbers`` is the Invoice model (decimals become numbers).
    Keys that are not CEL identifiers are reachable through ``invoice["..."]`` only."""
    whole = celpy.json_to_cel(_overlay(data, _numbers(numbers)))
    assert isinstance(whole, celpy.celtypes.MapType)
    names = ((str(k), v) for k, v in whole.items())
    context: dict[str, Any] = {k: v for k, v in names if _NAME.match(k) and "." not in k}
    context["invoice"] = whole
    return CelInput(context)
