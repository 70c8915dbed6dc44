"""Running one command imports that command's module only (the others' libraries cost seconds to import on a
Raspberry Pi), and it still parses as a sub-command; --help and unknown names still see every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_run.cli import main as cli_main

PROBE = """
import sys
from edge_run.cli.main import build_app, invoked_command
build_app(invoked_command(sys.argv[1:]))
print(" ".join(sorted(m for m in sys.modules if m.startswith("edge_run.cli."))))
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


HEAVY = ("gguf", "yaml", "rich", "numpy", "pydantic", "llama_cpp", "onnxruntime")
MODULES = f"""
print(" ".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


def test_building_the_run_command_imports_no_heavy_library() -> None:
    """`edge-run run` parses its options before anything heavy is imported (rich only for tables and bars,
    gguf-py only for conversion and inspection, numpy/llama_cpp when a model is opened)."""
    probe = "import sys\nfrom edge_run.cli.main import build_app\nbuild_app('run')\n" + MODULES
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stderr.split() == []


def test_a_whole_run_never_imports_gguf_py_rich_or_pydantic(tiny_gguf: Path) -> None:
    """The memory guard and context check read the header with core's reader; errors and text need no rich."""
    probe = ("import sys\nfrom edge_run.cli.main import main\n"
             f"assert main(['run', {str(tiny_gguf)!r}, '-p', 'hi', '-n', '2', '-t', '1']) == 0\n" + MODULES)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(out.stderr.split())
    assert "llama_cpp" in loaded  # it did run the model
    assert not loaded & {"gguf", "yaml", "rich", "pydantic"}, loaded  # pydantic: typer >= 0.29 (pyproject pins)
