"""The typer binding of the settings dataclasses (`spo_train.config`): one option per field,
named by its flag, help from its docstring, panels from `HELP_PANELS`; the `spo` command and
group classes whose help reflows. Only the CLI uses typer, so the binding lives here and the
training library does not import it."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from spo_train.config import HELP_PANELS, _types, coerce, field_map, flag_of, help_of


def _no_bool_metavar(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""  # typer's help would print `<bool>` for a switch
    return params


_LIST_ITEM = re.compile(r"(?:[-*] |\d+[.)] )")


def reflow_help(text: str | None) -> str | None:
    """A docstring as help that reflows to the terminal's width: the line breaks inside a
    paragraph become spaces (typer's rich help keeps them, so a docstring wrapped at 100
    columns printed broken lines at 80). Paragraphs (blank-line separated) stay; a list item
    (`- `, `* `, `1. `) starts its own line, its continuation lines join it; indented blocks and
    paragraphs marked with click's `\b` are kept as written."""
    if not text:
        return text
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b") or para.startswith("    "):
            out.append(para)
            continue
        lines: list[str] = []
        for line in para.split("\n"):
            stripped = line.strip()
            if not lines or _LIST_ITEM.match(stripped):
                lines.append(stripped)
            else:
                lines[-1] += " " + stripped
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _wrappable_names(params: list[Any]) -> list[Any]:
    """Copies of `params` for the help screen whose names can wrap: typer joins an option's
    names with "," into one unbreakable word and gives a switch's `--no-` form a column of its
    own, so at 80 columns rich cut `spo train --help`'s names to `--checkpoint-every,--s…` and
    `--no-grpo-scale-re…`. Here the names are one string with spaces (`--a, --b`,
    `--x / --no-x`) that wraps in one column. Parsing keeps the originals."""
    shown = []
    for p in params:
        longs = [o for o in p.opts if o.startswith("--")]
        negs = [o for o in p.secondary_opts if o.startswith("--")]
        if len(longs) > 1 or negs:
            p = copy.copy(p)
            name = ", ".join(longs)
            p.opts = [
                name + "".join(f" / {o}" for o in negs),
                *(o for o in p.opts if o not in longs),
            ]
            p.secondary_opts = [o for o in p.secondary_opts if o not in negs]
        shown.append(p)
    return shown


class SpoCommand(TyperCommand):
    """A typer command whose help reflows (`reflow_help`), shows no `<bool>` after switches
    (they take no value) and wraps long option names rather than cutting them."""

    _in_help = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow_help(self.help)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._in_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._in_help = False

    def get_params(self, ctx: Any) -> list[Any]:
        params = _no_bool_metavar(super().get_params(ctx))
        return _wrappable_names(params) if self._in_help else params


class SpoGroup(TyperGroup):
    """A typer group (`spo`, `spo lake`) whose help reflows and shows no `<bool>` after
    `--help`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_metavar(super().get_params(ctx))


def use_spo_command(app: typer.Typer) -> None:
    """Give every command of `app` (and of its sub-apps) the `SpoCommand` class, so no help
    shows `<bool>` after a switch. Call once after all commands are registered."""
    if app.info.cls in (None, TyperGroup) or not isinstance(app.info.cls, type):
        app.info.cls = SpoGroup
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = SpoCommand
    for group in app.registered_groups:
        if group.cls in (None, TyperGroup) or not isinstance(group.cls, type):
            group.cls = SpoGroup
        if group.typer_instance is not None:
            use_spo_command(group.typer_instance)


def _cli_type(cls: type, name: str) -> Any:
    f = field_map(cls)[name]
    base, optional = _types(cls)[name]
    if f.metadata.get("parse"):
        base = str
    return base | None if optional else base


def _cli_default(f: dataclasses.Field) -> Any:
    d = f.default
    if f.metadata.get("parse") and isinstance(d, tuple):
        return ",".join(map(str, d))
    return d


def typer_parameters(cls: type, *, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One typer option per CLI field of `cls`, named by `flag_of`, help from its docstring."""
    params = []
    panels = HELP_PANELS.get(cls, {})
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or f.name in skip:
            continue
        panel = {"rich_help_panel": panels[f.name]} if f.name in panels else {}
        base, _ = _types(cls)[f.name]
        flag = flag_of(f)
        names = [flag, *f.metadata.get("aliases", ())]
        if f.metadata.get("short"):
            names.append(f.metadata["short"])
        show = f.metadata.get("show_default")
        if base is bool:
            decl = names if f.default is False else [f"{flag}/--no-{flag[2:]}"]
            opt = typer.Option(*decl, help=help_of(cls, f.name), show_default=False, **panel)
            ann: Any = Annotated[bool, opt]
        else:
            opt = typer.Option(
                *names,
                help=help_of(cls, f.name),
                show_default=(f.default is not None) if show is None else show,
                metavar=f.metadata.get("metavar"),
                **panel,
            )
            ann = Annotated[_cli_type(cls, f.name), opt]
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(f), annotation=ann
            )
        )
    return params


def explicit_values(cls: type, ctx: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the user gave on the command line, coerced to the field types."""
    from typer._click.core import ParameterSource

    fields = field_map(cls)
    return {
        k: coerce(cls, k, v, flag_of(fields[k]))
        for k, v in kwargs.items()
        if k in fields
        and ctx.get_parameter_source(k)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }


def command_from(
    cls: type,
    body: Callable[..., None],
    *,
    extra: list[inspect.Parameter] = (),  # type: ignore[assignment]
    skip: tuple[str, ...] = (),
) -> Callable[..., None]:
    """A typer command function with `cls`'s options plus `extra`.

    It calls `body(explicit, **kwargs)`: `explicit` holds the settings of `cls` given on the
    command line (coerced), `kwargs` every option's value (extras included).
    """

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        body(explicit_values(cls, ctx, kwargs), **kwargs)

    ctx_param = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    params = [*typer_parameters(cls, skip=skip), *extra]
    command.__signature__ = inspect.Signature([ctx_param, *params])  # type: ignore[attr-defined]
    command.__annotations__ = {"ctx": typer.Context} | {p.name: p.annotation for p in params}
    command.__doc__ = body.__doc__
    command.__name__ = body.__name__
    return command
