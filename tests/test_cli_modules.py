"""Every command module in COMMAND_MODULES exists and registers; a mistyped one fails loudly instead of
silently dropping its command."""

from __future__ import annotations

import pytest

from edge_run.cli import main as cli_main


def test_every_command_module_registers() -> None:
    app = cli_main.build_app()
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    names |= {g.name for g in app.registered_groups if g.name}
    assert len(names) >= len(cli_main.COMMAND_MODULES) - 1  # profiles is a group of several commands
    assert {"convert", "run", "inspect", "pick", "eval", "bench"} <= names


def test_mistyped_command_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, "covnert"))
    with pytest.raises(ModuleNotFoundError, match="covnert"):
        cli_main.build_app()


def test_module_without_register_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, "_common"))
    with pytest.raises(ImportError, match="has no register"):
        cli_main.build_app()
