"""The part of Go's text/template that Ollama TEMPLATEs use, executed in Python.

Registration checks every TEMPLATE by rendering it before writing it, and a user's machine need not
have Go. So this module parses and executes the subset those templates use: text and actions with
`{{-`/`-}}` trimming, comments, `if`/`else if`/`else`, `range` (with `$i, $x :=`, `else`, `break`,
`continue`), `with`, variables (`:=` declares, `=` assigns), fields, pipelines, parentheses, and the
builtin functions (`and or not eq ne lt le gt ge len index slice print printf`) plus Ollama's `json`
and `currentDate`. Anything else (`define`, `template`, `block`, method calls) raises
`GoTemplateError`, so an unknown construct is refused, never guessed. The test suite checks this
executor against Go's own text/template on every template and conversation it is used for.

Values follow Go's reflection rules as far as these templates can see them: a dict is a Go map (a
missing key prints `<no value>`), a `GoStruct` a struct (a missing field is an error), None is nil.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable

from posttrain.serve._gotemplate_parse import GoTemplateError, Node, Pipe, parse

__all__ = ["NO_VALUE", "OLLAMA_DATE_FORMAT", "GoStruct", "GoTemplateError", "execute", "to_text", "truth"]


class GoStruct(dict):
    """A Go struct: only its fields exist (Ollama's api.Message in `.Messages`)."""


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()  # what a missing map key is in Go: printed "<no value>", false in conditions


# ---- executing -------------------------------------------------------------------------------------

class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(v: object) -> bool:
    """Go's notion of a true value in `if`, `and`, `or`, `not`."""
    if v is None or v is NO_VALUE:
        return False
    if isinstance(v, GoStruct):
        return True
    if isinstance(v, bool | int | float | str | list | tuple | dict):
        return bool(v)
    return True


def to_text(v: object) -> str:
    """What `{{ v }}` prints (fmt.Print's formatting for the kinds these templates meet)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "<nil>"
    if v is NO_VALUE:
        return "<no value>"
    if isinstance(v, list | tuple):
        return "[" + " ".join(to_text(x) for x in v) + "]"
    if isinstance(v, GoStruct):
        return "{" + " ".join(to_text(x) for x in v.values()) + "}"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{to_text(k)}:{to_text(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _go_json(v: object) -> str:
    # encoding/json escapes <, > and & for HTML safety; a template printing JSON shows that.
    text = json.dumps(None if v is NO_VALUE else v, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _compare(op: str, a: object, b: object) -> bool:
    if isinstance(a, bool) != isinstance(b, bool) or isinstance(a, str) != isinstance(b, str):
        raise GoTemplateError(f"incompatible types for comparison: {to_text(a)!r} {op} {to_text(b)!r}")
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if isinstance(a, bool):
        raise GoTemplateError("invalid type for comparison")
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]  # type: ignore[operator]


def _length(v: object) -> int:
    if isinstance(v, str | list | tuple | dict):
        return len(v.encode() if isinstance(v, str) else v)  # Go's len of a string counts bytes
    raise GoTemplateError(f"len of {to_text(v)!r}")


def _index(v: object, *keys: object) -> object:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k, NO_VALUE) if not isinstance(v, GoStruct) else v[k]
        elif isinstance(v, list | tuple | str) and isinstance(k, int) and 0 <= k < len(v):
            v = v[k]
        else:
            raise GoTemplateError(f"error calling index: index {to_text(k)} out of range")
    return v


def _slice(v: object, *bounds: object) -> object:
    if not isinstance(v, str | list | tuple) or not all(isinstance(b, int) for b in bounds) or len(bounds) > 2:
        raise GoTemplateError("error calling slice")
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(v)
    if not 0 <= lo <= hi <= len(v):  # type: ignore[operator]
        raise GoTemplateError(f"error calling slice: index out of range [{lo}:{hi}]")
    return v[lo:hi]  # type: ignore[misc]


def _sprint(*args: object) -> str:
    # fmt.Sprint puts a space between operands when neither is a string.
    out = ""
    for n, a in enumerate(args):
        if n and not isinstance(a, str) and not isinstance(args[n - 1], str):
            out += " "
        out += to_text(a)
    return out


def _printf(fmt: str, *args: object) -> str:
    it = iter(args)
    return re.sub(r"%[svdq%]", lambda m: "%" if m.group() == "%%" else
                  (json.dumps(next(it, "")) if m.group() == "%q" else to_text(next(it, ""))), fmt)


FUNCTIONS = {
    "not": lambda a: not truth(a),
    "len": _length, "index": _index, "slice": _slice,
    "print": _sprint, "println": lambda *a: " ".join(to_text(x) for x in a) + "\n", "printf": _printf,
    "json": _go_json,
    **{op: (lambda op: lambda a, *bs: (any(_compare("eq", a, b) for b in bs) if op == "eq" and bs else
                                       _compare(op, a, *bs)))(op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
}


# Ollama's date functions (template/template.go) print time.Now().Format("2006-01-02") and ignore any
# format argument, so a template cannot choose how the date looks.
OLLAMA_DATE_FORMAT = "%Y-%m-%d"


def _date_functions(today: datetime.date | None) -> dict[str, Callable[..., object]]:
    def day(offset: int) -> str:
        return ((today or datetime.date.today()) - datetime.timedelta(days=offset)).strftime(OLLAMA_DATE_FORMAT)

    return {"currentDate": lambda *_format: day(0), "yesterdayDate": lambda *_format: day(1)}


class _Scope:
    def __init__(self, dot: object):
        self.frames: list[dict[str, object]] = [{"$": dot}]

    def get(self, name: str) -> object:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise GoTemplateError(f"undefined variable: {name}")

    def set(self, name: str, value: object) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise GoTemplateError(f"undefined variable: {name}")


def _field(v: object, name: str) -> object:
    if isinstance(v, GoStruct):
        if name not in v:
            raise GoTemplateError(f"can't evaluate field {name}")
        return v[name]
    if isinstance(v, dict):
        return v.get(name, NO_VALUE)
    if v is None or v is NO_VALUE:
        raise GoTemplateError(f"nil pointer evaluating .{name}")
    raise GoTemplateError(f"can't evaluate field {name} in {to_text(v)!r}")


class _Exec:
    def __init__(self, scope: _Scope, functions: dict[str, Callable[..., object]]):
        self.scope = scope
        self.functions = functions

    def operand(self, op: tuple[str, object], dot: object) -> object:
        kind, text = op
        if kind == "str":
            return json.loads(str(text))
        if kind == "raw":
            return str(text)[1:-1]
        if kind == "num":
            return float(str(text)) if "." in str(text) else int(str(text))
        if kind == "var":
            return self.scope.get(str(text))
        if kind == "field":
            if text == ".":
                return dot
            v = dot
            for name in str(text).split(".")[1:]:
                v = _field(v, name)
            return v
        if kind == "ident":
            if text in {"true", "false"}:
                return text == "true"
            if text == "nil":
                return None
            return self.call(str(text), [], dot)
        if kind == "pipe":
            return self.pipe(text, dot)  # type: ignore[arg-type]
        if kind == "chained":
            base, chain = text  # type: ignore[misc]
            v = self.operand(base, dot)
            for name in chain.split(".")[1:]:
                v = _field(v, name)
            return v
        raise GoTemplateError(f"unexpected operand {text!r}")

    def call(self, name: str, args: list[tuple[str, object]], dot: object, piped: tuple = ()) -> object:
        if name in {"and", "or"}:  # short-circuit, returning the deciding value (Go 1.18)
            values = [*((lambda a=a: self.operand(a, dot)) for a in args), *((lambda p=p: p) for p in piped)]
            if not values:
                raise GoTemplateError(f"wrong number of args for {name}")
            v: object = None
            for get in values:
                v = get()
                if truth(v) != (name == "and"):
                    return v
            return v
        fn = self.functions.get(name)
        if fn is None:
            raise GoTemplateError(f'function "{name}" not defined')
        try:
            return fn(*(self.operand(a, dot) for a in args), *piped)
        except TypeError as e:
            raise GoTemplateError(f"wrong arguments for {name}: {e}") from None

    def command(self, cmd: list[tuple[str, object]], dot: object, piped: tuple) -> object:
        head = cmd[0]
        if head[0] == "ident" and head[1] not in {"true", "false", "nil"}:
            return self.call(str(head[1]), cmd[1:], dot, piped)
        if len(cmd) > 1 or piped:
            raise GoTemplateError(f"can't give argument to non-function {head[1]!r}")
        return self.operand(head, dot)

    def pipe(self, p: Pipe, dot: object, declare: bool = True) -> object:
        value: object = NO_VALUE
        for n, cmd in enumerate(p.cmds):
            value = self.command(cmd, dot, (value,) if n else ())
        if p.decl and declare:
            if p.assign:
                self.scope.set(p.decl[0], value)
            else:
                self.scope.frames[-1][p.decl[0]] = value
        return value

    def run(self, nodes: list[Node], dot: object, out: list[str]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(str(node.value))
            elif node.kind == "action":
                value = self.pipe(node.pipe, dot)  # type: ignore[arg-type]
                if not node.pipe.decl:  # type: ignore[union-attr]
                    out.append(to_text(value))
            elif node.kind in {"if", "with"}:
                self.scope.frames.append({})
                try:
                    value = self.pipe(node.pipe, dot)  # type: ignore[arg-type]
                    if truth(value):
                        self.run(node.body, value if node.kind == "with" else dot, out)
                    else:
                        self.run(node.orelse, dot, out)
                finally:
                    self.scope.frames.pop()
            elif node.kind == "range":
                self._range(node, dot, out)
            elif node.kind == "break":
                raise _Break()
            else:
                raise _Continue()

    def _range(self, node: Node, dot: object, out: list[str]) -> None:
        p = node.pipe
        assert p is not None
        items = self.pipe(p, dot, declare=False)
        if isinstance(items, dict):
            pairs = [(k, items[k]) for k in sorted(items)]
        elif isinstance(items, list | tuple):
            pairs = list(enumerate(items))
        elif isinstance(items, int) and not isinstance(items, bool):
            pairs = [(i, i) for i in range(items)]
        elif items is None or items is NO_VALUE:
            pairs = []
        else:
            raise GoTemplateError(f"range can't iterate over {to_text(items)!r}")
        if not pairs:
            self.run(node.orelse, dot, out)
            return
        for key, elem in pairs:
            frame: dict[str, object] = {}
            if len(p.decl) == 1:
                frame[p.decl[0]] = elem
            elif len(p.decl) == 2:
                frame[p.decl[0]], frame[p.decl[1]] = key, elem
            self.scope.frames.append(frame)
            try:
                self.run(node.body, elem, out)
            except _Break:
                break
            except _Continue:
                continue
            finally:
                self.scope.frames.pop()


def execute(template: str, data: object, *, today: datetime.date | None = None) -> str:
    """`template` executed on `data` as Go's text/template would (within the supported subset).

    `today` is the day `currentDate` prints (the machine's date when None): the check pins it so that
    it can compare a dated prompt with the Jinja's rendering on the same day."""
    out: list[str] = []
    _Exec(_Scope(data), {**FUNCTIONS, **_date_functions(today)}).run(parse(template), data, out)
    return "".join(out)
