"""MkDocs hooks (mkdocs.yml ``hooks:``): pages that are generated from the code at build time, so that
they cannot drift from it.

- ``<!-- fedtab:cli-reference -->`` (docs/cli.md) becomes the reference of every command of the typer
  app, read off click's command tree: usage, description, arguments and options with their help.
- ``<!-- fedtab:model-options -->`` (docs/configuration.md) becomes one table per model of the keys its
  ``[model]`` table accepts, read off the models' configuration classes.

tests/test_docs.py calls ``cli_reference()`` and ``model_options()`` directly.
"""

from __future__ import annotations

import dataclasses
import inspect

import click

CLI_MARKER = "<!-- fedtab:cli-reference -->"
MODEL_OPTIONS_MARKER = "<!-- fedtab:model-options -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if MODEL_OPTIONS_MARKER in markdown:
        markdown = markdown.replace(MODEL_OPTIONS_MARKER, model_options())
    return markdown


# -- CLI reference ----------------------------------------------------------------------------------

def commands() -> list[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for every command and group of the app, depth first, in the app's order."""
    import typer.main

    from fedtab.cli import app

    out = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(("fedtab", *path))


def _usage(path: tuple[str, ...], cmd: click.Command) -> str:
    ctx = click.Context(cmd, info_name=" ".join(("fedtab", *path)))
    return f"{ctx.command_path} {' '.join(cmd.collect_usage_pieces(ctx))}"


def _default(param: click.Parameter) -> str:
    if param.required or param.default is None or getattr(param, "is_flag", False) and param.default is False:
        return ""
    default = param.default
    if callable(default):
        return ""
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return param.opts[0] if default else param.secondary_opts[0]
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{d}`" for d in default)
    return f"`{default}`"


def _value(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return ""
    if isinstance(param.type, click.Choice):
        return " \\| ".join(f"`{c}`" for c in param.type.choices)
    metavar = param.metavar or param.type.name.upper()
    return f"`{metavar}`"


def _command_section(path: tuple[str, ...], cmd: click.Command) -> str:
    level = "#" * min(2 + max(len(path) - 1, 0), 4)
    title = " ".join(("fedtab", *path))
    lines = [f"{level} `{title}` {{#{_anchor(path)}}}", ""]
    lines += ["```text", _usage(path, cmd), "```", ""]
    help_text = inspect.cleandoc(cmd.help or "").partition("\f")[0]
    if help_text:
        lines += [help_text, ""]
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    opts = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    if args:
        lines += ["| argument | value | description |", "|---|---|---|"]
        for a in args:
            required = " (required)" if a.required else ""
            lines.append(f"| `{(a.metavar or a.name).upper()}` | {_value(a)} | {_cell(getattr(a, 'help', '') or '')}"
                         f"{required} |")
        lines.append("")
    if opts:
        lines += ["| option | value | default | description |", "|---|---|---|---|"]
        for o in opts:
            names = ", ".join(f"`{n}`" for n in (*o.opts, *o.secondary_opts))
            required = " (required)" if o.required else ""
            lines.append(f"| {names} | {_value(o)} | {_default(o)} | {_cell(o.help or '')}{required} |")
        lines.append("")
    if isinstance(cmd, click.Group):
        subs = [(n, c) for n, c in cmd.commands.items() if not c.hidden]
        lines += ["| command | what it does |", "|---|---|"]
        for name, sub in subs:
            first = inspect.cleandoc(sub.help or "").split("\n\n")[0]
            lines.append(f"| [`{name}`](#{_anchor((*path, name))}) | {_cell(first)} |")
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """The reference of every command of ``fedtab.cli.app``, as Markdown."""
    return "\n".join(_command_section(path, cmd) for path, cmd in commands())


# -- Model options ----------------------------------------------------------------------------------

def model_option_keys() -> dict[str, dict[str, object]]:
    """Model name -> {option: default} of every key its ``[model]`` table accepts (besides ``name``)."""
    from fedtab.models.marginal import DEFAULT_OPTIONS, NAME
    from fedtab.models.registry import available_models, get_model_class

    out: dict[str, dict[str, object]] = {NAME: dict(DEFAULT_OPTIONS)}
    for name in available_models():
        cls = get_model_class(name).config_class
        out[name] = {f.name: (f.default if f.default is not dataclasses.MISSING else
                              f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                     for f in dataclasses.fields(cls)}
    return out


def _toml(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def model_options() -> str:
    """One Markdown table per model: each ``[model]`` key and its default."""
    lines = []
    for model, options in model_option_keys().items():
        lines += [f"**`name = \"{model}\"`**", "", "| key | default |", "|---|---|"]
        lines += [f"| `{k}` | `{_cell(_toml(v))}` |" for k, v in options.items()]
        lines.append("")
    return "\n".join(lines)
