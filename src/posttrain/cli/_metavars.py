"""Plain metavars in every command's --help: `TEXT`, `N`, `NUMBER`, `PATH`, nothing for a flag.

typer >= 0.2x prints a parameter's Python type where a metavar would be (`<bool>` beside a flag,
`<list[str]>`, `<int range>`), which reads as code rather than as what to type. Rather than a
`metavar=` on each of a hundred options (and every new one), the application's group class
(`PlainHelpGroup`, used by `_app.app`) gives each option that names none a plain one from its type,
once, when typer has built the commands. An option that names its own metavar (`--tasks TASKS`,
`--notify URL`) keeps it.
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import PurePath
from typing import Any

from typer.core import TyperGroup

# Python types (typer >= 0.2x) and click's type names (older typer) to the word help shows.
_BY_TYPE = {int: "N", float: "NUMBER", str: "TEXT"}
_BY_CLICK_NAME = {"integer": "N", "integer range": "N", "float": "NUMBER", "float range": "NUMBER",
                  "path": "PATH", "filename": "PATH", "text": "TEXT"}


def _element(annotation: Any) -> Any:
    """`int | None` -> int, `list[Path] | None` -> Path: the type of one value typed after the option."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next((a for a in typing.get_args(annotation) if a is not type(None)), str)
    if typing.get_origin(annotation) in (list, tuple, set):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        annotation = _element(args[0]) if args else str
    return annotation


def plain_metavar(param: Any) -> str | None:
    """The word `param`'s help shows for its value: "" for a flag (it takes none), None to leave a
    choice's own `[a|b]` to click."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.2x: its own type model
    if descriptor is None:
        name = getattr(getattr(param, "type", None), "name", "text")
        return None if name == "choice" else _BY_CLICK_NAME.get(name, "TEXT")
    kind = _element(descriptor.annotation)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "[" + "|".join(str(member.value) for member in kind) + "]"
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return "PATH"
    return _BY_TYPE.get(kind, "TEXT") if kind is not bool else ""


def _help_flag(command: Any) -> list[Any]:
    """The command's --help option, which click makes on first use and then keeps (`_help_option`,
    click >= 8.2 and typer's copy): made now, so that it too shows no metavar."""
    if not hasattr(command, "_help_option"):
        return []  # older click: a new one each time, shown as a flag already
    option = command.get_help_option(command.context_class(command))
    return [option] if option is not None else []


def _plain(command: Any) -> None:
    for param in [*getattr(command, "params", []), *_help_flag(command)]:
        word = plain_metavar(param)
        if word is None:
            continue
        if getattr(param, "param_type_name", "") == "option":
            if param.metavar is None:
                param.metavar = word
        elif hasattr(param, "type_descriptor"):
            # An argument's metavar is also its name in help (CHECKPOINTS...): only the type column,
            # which typer >= 0.2x fills with `<list[Path]>`, says the plain word instead.
            param.display_type_rich = lambda ctx, word=word: word or None
    for sub in (getattr(command, "commands", None) or {}).values():
        _plain(sub)


class PlainHelpGroup(TyperGroup):
    """The application's group: every command under it (sub-groups too) shows plain metavars."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain(self)  # typer builds the commands before their group: all of them are here now
