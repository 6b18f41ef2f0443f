"""Reading an Ollama TEMPLATE: Go text/template's lexing and parsing, for the subset `_gotemplate` runs.

Text and actions with `{{-`/`-}}` trimming, comments, `if`/`else if`/`else`/`end`, `range`, `with`,
`break`, `continue`, pipelines, parentheses and variable declarations; `define`, `template` and
`block` raise GoTemplateError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class GoTemplateError(ValueError):
    """The template uses something outside the supported subset, or fails as Go's would."""


_SPACE = " \t\r\n"


# ---- lexing: text and actions ---------------------------------------------------------------------

def _split(src: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", body) pieces, with Go's trim markers already applied to the text."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            pieces.append(("text", text))
            return pieces
        i = start + 2
        if src.startswith("-", i) and i + 1 < len(src) and src[i + 1] in _SPACE:
            text = text.rstrip(_SPACE)
            i += 2
        pieces.append(("text", text))
        end = _action_end(src, i)
        body = src[i:end]
        trim_next = bool(re.search(r"[ \t\r\n]-$", body))
        if trim_next:
            body = body[:-2]
        if not body.strip().startswith("/*"):
            pieces.append(("action", body))
        elif not body.strip().endswith("*/"):
            raise GoTemplateError("unclosed comment")
        pos = end + 2


def _action_end(src: str, i: int) -> int:
    """Index of the `}}` closing the action that starts at `i`, skipping quoted strings and comments."""
    if src[i:].lstrip(_SPACE).startswith("/*"):
        close = src.find("*/", i)
        end = src.find("}}", close) if close >= 0 else -1
    else:
        end, quote = -1, None
        j = i
        while j < len(src):
            c = src[j]
            if quote:
                if c == "\\" and quote != "`":
                    j += 1
                elif c == quote:
                    quote = None
            elif c in "\"`'":
                quote = c
            elif src.startswith("}}", j):
                end = j
                break
            j += 1
    if end < 0:
        raise GoTemplateError("unclosed action")
    return end


_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<char>'(?:[^'\\]|\\.)+')
    |(?P<num>-?\d+(?:\.\d+)?)|(?P<decl>:=)|(?P<punct>[()|=,])|(?P<var>\$\w*)|(?P<field>(?:\.\w+)+|\.)
    |(?P<ident>\w+))""", re.VERBOSE)


def _tokens(body: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(body):
        if body[pos:].strip() == "":
            break
        m = _TOKEN.match(body, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot read {body[pos:].strip()[:20]!r} in {{{{{body.strip()}}}}}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "var" and body.startswith(".", m.end()):  # $x.Field
            f = re.compile(r"(?:\.\w+)+").match(body, m.end())
            if f:
                out.append(("var", text))
                out.append(("chain", f.group()))
                pos = f.end()
                continue
        out.append((kind, text))
        pos = m.end()
    return out


# ---- parsing ---------------------------------------------------------------------------------------

@dataclass
class Pipe:
    decl: list[str]
    assign: bool  # `=` rather than `:=`
    cmds: list[list[tuple[str, object]]]


@dataclass
class Node:
    kind: str  # text, action, if, range, with, break, continue
    value: object = None
    pipe: Pipe | None = None
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _parse_pipe(toks: list[tuple[str, str]], i: int = 0, close: bool = False) -> tuple[Pipe, int]:
    decl: list[str] = []
    assign = False
    j = i
    while j < len(toks) and toks[j][0] == "var":  # `$a, $b :=` or `$a =`
        if j + 1 < len(toks) and toks[j + 1] == ("punct", ","):
            j += 2
            continue
        if j + 1 < len(toks) and (toks[j + 1][0] == "decl" or toks[j + 1] == ("punct", "=")):
            decl = [t[1] for t in toks[i:j + 1:2]]
            assign = toks[j + 1][0] != "decl"
            i = j + 2
        break
    cmds: list[list[tuple[str, object]]] = [[]]
    while i < len(toks):
        kind, text = toks[i]
        if (kind, text) == ("punct", ")"):
            if not close:
                raise GoTemplateError("unexpected )")
            return Pipe(decl, assign, cmds), i + 1
        if (kind, text) == ("punct", "|"):
            cmds.append([])
            i += 1
            continue
        if (kind, text) == ("punct", "("):
            sub, i = _parse_pipe(toks, i + 1, close=True)
            cmds[-1].append(("pipe", sub))
            continue
        if kind == "chain":
            if not cmds[-1]:
                raise GoTemplateError("field chain without operand")
            cmds[-1][-1] = ("chained", (cmds[-1][-1], text))
        elif kind in {"str", "raw", "num", "var", "field", "ident"}:
            cmds[-1].append((kind, text))
        else:
            raise GoTemplateError(f"unexpected {text!r}")
        i += 1
    if close:
        raise GoTemplateError("unclosed (")
    if any(not c for c in cmds):
        raise GoTemplateError("empty command in pipeline")
    return Pipe(decl, assign, cmds), i


def _fix_chains(toks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`(pipe).Field`: the field chain the lexer read after a `)` applies to the parenthesised value."""
    return [("chain", t) if k == "field" and t != "." and n and toks[n - 1] == ("punct", ")") else (k, t)
            for n, (k, t) in enumerate(toks)]


def parse(src: str) -> list[Node]:
    """The template's tree; raises GoTemplateError for syntax outside the supported subset."""
    root: list[Node] = []
    stack: list[tuple[Node, list[Node]]] = []  # open block, the list now being filled
    current = root
    for kind, body in _split(src):
        if kind == "text":
            if body:
                current.append(Node("text", body))
            continue
        toks = _fix_chains(_tokens(body))
        if not toks:
            raise GoTemplateError("empty action")
        word = toks[0][1] if toks[0][0] == "ident" else None
        if word in {"if", "range", "with"}:
            node = Node(word, pipe=_parse_pipe(toks, 1)[0])
            current.append(node)
            stack.append((node, node.body))
            current = node.body
        elif word == "else":
            if not stack or stack[-1][1] is stack[-1][0].orelse:
                raise GoTemplateError("else outside if/range/with")
            block = stack[-1][0]
            current = block.orelse
            stack[-1] = (block, block.orelse)
            if len(toks) > 1:  # `else if …` / `else with …`: a nested block closed by the same end
                if toks[1][1] not in {"if", "with"}:
                    raise GoTemplateError(f"else {toks[1][1]} is not supported")
                inner = Node(toks[1][1], pipe=_parse_pipe(toks, 2)[0])
                current.append(inner)
                stack.append((inner, inner.body))
                current = inner.body
                inner.value = "chained"
        elif word == "end":
            if not stack:
                raise GoTemplateError("unexpected end")
            while True:  # an `else if` chain ends with its outer block
                node, _ = stack.pop()
                if node.value != "chained":
                    break
            current = stack[-1][1] if stack else root
        elif word in {"break", "continue"}:
            current.append(Node(word))
        elif word in {"define", "template", "block"}:
            raise GoTemplateError(f"{{{{{word}}}}} is not supported")
        else:
            current.append(Node("action", pipe=_parse_pipe(toks)[0]))
    if stack:
        raise GoTemplateError(f"unclosed {stack[-1][0].kind}")
    return root
