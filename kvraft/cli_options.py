"""Click options generated from :mod:`kvraft.config`: type, range, help and default shown.

The command line states no default and no range of its own: both come from the settings
field the option sets, and a bad value is refused with the same words as in a file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kvraft.config import Setting, SettingError

F = TypeVar("F", bound=Callable[..., Any])


class SettingType(click.ParamType):
    """Accepts what setting ``s`` accepts (converted from the command line's text)."""

    def __init__(self, s: Setting) -> None:
        self.setting = s
        self.name = {int: "integer", float: "number", str: "text"}[s.kind]

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        s = self.setting
        if isinstance(value, str) and s.kind is not str:
            try:
                value = s.kind(value.strip())
            except ValueError:
                self.fail(f"{value!r} is not {s.accepted()}", param, ctx)
        try:
            return s.parse(value)
        except SettingError as e:
            self.fail(e.reason, param, ctx)


def help_text(s: Setting, *, envvar: bool = True) -> str:
    """``s``'s description with its environment variable, default and range."""
    extra = []
    if envvar and s.envvar:
        extra.append(f"env var: {s.envvar}")
    shown = s.shown_default()
    if shown is not None:
        extra.append(f"default: {shown}")
    if s.bounds():
        extra.append(s.bounds())
    return f"{s.doc}  [{'; '.join(extra)}]" if extra else s.doc


def setting_option(s: Setting, *, use_default: bool = False,
                   **overrides: Any) -> Callable[[F], F]:
    """``--key-with-dashes`` for setting ``s``; its parameter is named ``s.key``.

    The option's value is ``None`` unless given (so a config file can fill it in);
    ``use_default`` makes the setting's default the value. --help shows the default.
    """
    kwargs: dict[str, Any] = {
        "type": SettingType(s),
        "default": s.default if use_default else None,
        "help": help_text(s),
    }
    if s.envvar:
        kwargs["envvar"] = s.envvar
    kwargs.update(overrides)
    return click.option(s.option, s.key, **kwargs)
