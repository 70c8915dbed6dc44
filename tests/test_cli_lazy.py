"""Running one command imports that command's module only (the others' libraries cost seconds to import on a
Raspberry Pi), and it still parses as a sub-command; --help and unknown names still see every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_run.runtime.cli import main as cli_main

PROBE = """
import sys
from edge_run.runtime.cli.main import build_app, invoked_command
build_app(invoked_command(sys.argv[1:]))
print(" ".join(sorted(m for m in sys.modules if m.startswith("edge_run.runtime.cli."))))
"""


@pytest.mark.parametrize("argv", [["run", "m.gguf", "-p", "hi"], ["inspect", "m.gguf"], ["--json", "pick"]])
def test_one_command_module_is_imported(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True).stdout
    loaded = {m.rsplit(".", 1)[1] for m in out.split()} & set(cli_main.COMMAND_MODULES)
    assert loaded == {next(a for a in argv if not a.startswith("-"))}


@pytest.mark.parametrize("argv", [[], ["--help"], ["nope"], ["-x"]])
def test_help_and_unknown_commands_see_every_command(argv: list[str]) -> None:
    assert cli_main.invoked_command(argv) is None


def test_single_command_app_still_needs_the_command_name() -> None:
    app = cli_main.build_app("profiles")
    with pytest.raises(SystemExit) as e:
        app(args=["profiles", "--help"], standalone_mode=True)
    assert e.value.code == 0
    app = cli_main.build_app("run")
    with pytest.raises(SystemExit) as e:  # the command's name is required, as with every command registered
        app(args=["m.gguf", "-p", "hi"], standalone_mode=True)
    assert e.value.code == 2
