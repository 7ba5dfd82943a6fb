"""CLI command groups. Each module defines ``register(app)``; ``fedtab.cli`` calls them in order.

To add a command group (``train``, ``sample``, ``demo``, ...): write ``fedtab/commands/<name>.py`` with a
``register(app: typer.Typer)`` that defines its commands with ``common.command(app)`` (which turns
fedtab errors into clean messages and exit codes), then list the module in ``fedtab.cli.COMMAND_MODULES``.
"""
