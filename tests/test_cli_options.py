"""One convention for the command line (issue 29, item 5): every command's --help shows plain
metavars (TEXT, N, PATH, URL; nothing beside a flag), never Python types (`<bool>`, `<list[str]>`,
`<int range>`), and `--tasks` / `-q` take repeated options and comma lists alike on every command
that has them."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.cli._options import split_list

ROOT = get_command(app)
TYPE_WORDS = re.compile(r"<[^>]*>|range", re.I)  # typer's `<bool>`, `<list[str]>`, `<int range>`


def listed_commands(group=ROOT, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command `posttrain --help` lists, and the commands of the groups it lists (`lora merge`)."""
    found = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        found.append(((*path, name), command))
        if getattr(command, "commands", None):
            found += listed_commands(command, (*path, name))
    return found


def help_text(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250"}, prog_name="posttrain")
    assert result.exit_code == 0, result.output
    return result.output


def names_and_metavar(line: str, param) -> str:
    """A help row up to where the parameter's help begins: its names, its metavar, the `*` of a
    required one and the table's border."""
    first_words = " ".join((param.help or "").split()[:2])
    return line.split(first_words)[0] if first_words and first_words in line else line


def row_of(text: str, param) -> str:
    """The parameter's row: the line whose first column (after the border and a `*`) is its name."""
    names = param.opts if param.param_type_name == "option" else [param.metavar or param.name]
    rows = [line for line in text.splitlines()
            if any(re.match(rf"^[│|\s*]{{0,8}}{re.escape(n)}(?![\w-])", line, re.I) for n in names)]
    assert rows, f"{names} not in the help:\n{text}"
    return rows[0]


def test_root_help_lists_every_command_walked_here():
    text = help_text()
    for path, _ in listed_commands():
        if len(path) == 1:
            assert re.search(rf"^\W*{re.escape(path[0])}\s", text, re.M), path


@pytest.mark.parametrize("path", [p for p, _ in listed_commands()], ids=" ".join)
def test_help_shows_plain_metavars_and_none_beside_a_flag(path):
    command = dict(listed_commands())[path]
    text = help_text(*path)
    ctx = command.context_class(command)
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        head = names_and_metavar(row_of(text, param), param)
        assert not TYPE_WORDS.search(head), f"{' '.join(path)}: {head.strip()}"
        if getattr(param, "is_flag", False):
            # A flag takes no value: its row holds its names (and --no-x) and nothing else.
            words = [w for w in re.split(r"[\s│,]+", head) if w and w != "*"]
            assert all(w.startswith("-") for w in words), f"{' '.join(path)}: {head.strip()}"


def parsed(path: tuple[str, ...], args: list[str]) -> dict:
    """What the command would be called with, from a command line that is parsed but not run
    (a required argument gets a placeholder)."""
    command = dict(listed_commands())[path]
    required = [p for p in command.params if p.param_type_name == "argument" and p.required]
    ctx = command.make_context(" ".join(path), ["x" for _ in required] + args)
    return ctx.params


def commands_with(option: str) -> list[tuple[str, ...]]:
    return [path for path, command in listed_commands()
            if any(option in p.opts for p in getattr(command, "params", []))]


def test_tasks_and_quant_are_on_the_commands_that_take_them():
    assert set(commands_with("--tasks")) == {("eval",), ("ship",), ("run",), ("watch",)}
    assert set(commands_with("--quant")) == {("convert",), ("ship",), ("run",), ("watch",)}
    for path in commands_with("--tasks"):
        assert "-t" in next(p for p in dict(listed_commands())[path].params if "--tasks" in p.opts).opts, path
    for path in commands_with("--quant"):
        assert "-q" in next(p for p in dict(listed_commands())[path].params if "--quant" in p.opts).opts, path


@pytest.mark.parametrize("path", commands_with("--tasks"), ids=" ".join)
def test_tasks_take_repeated_options_and_comma_lists_alike(path):
    for args in (["--tasks", "mmlu,gsm8k", "--tasks", "hellaswag"], ["-t", "mmlu", "-t", "gsm8k,hellaswag"],
                 ["--tasks", " mmlu , gsm8k,,hellaswag,mmlu"]):
        assert parsed(path, args)["tasks"] == ["mmlu", "gsm8k", "hellaswag"], (path, args)


@pytest.mark.parametrize("path", commands_with("--quant"), ids=" ".join)
def test_quant_takes_repeated_options_and_comma_lists_alike(path):
    for args in (["-q", "f16,q8_0", "-q", "q4_k_m"], ["--quant", "f16", "--quant", "q8_0", "-q", "q4_k_m"]):
        assert parsed(path, args)["quant"] == ["f16", "q8_0", "q4_k_m"], (path, args)


def test_defaults_stand_when_the_lists_are_not_given():
    assert parsed(("eval",), [])["tasks"] == ["mmlu", "gsm8k", "hellaswag"]
    assert parsed(("convert",), [])["quant"] == ["f16", "q8_0", "q4_k_m"]
    assert parsed(("ship",), [])["tasks"] is None  # no tasks: quality and speed only
    # run and watch: not given is None, so posttrain.toml (or its default) decides.
    assert parsed(("run",), [])["tasks"] is None and parsed(("run",), [])["quant"] is None


def test_split_list():
    assert split_list(None) == [] and split_list("a, b") == ["a", "b"]
    assert split_list(["a,b", "", " c ", "a"]) == ["a", "b", "c"]
