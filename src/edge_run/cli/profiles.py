"""`edge-run profiles list | show NAME | detect`: device profiles (TOML data)."""

from __future__ import annotations

import typer
from rich.table import Table

from edge_run.cli._common import console, print_json
from edge_run.profiles.devices import detect, get_profile, list_profiles, user_profile_dir

app = typer.Typer(help=f"Device profiles (add your own as TOML files in {user_profile_dir()}).",
                  no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """All profiles: shipped and the user's own."""
    profiles = list_profiles()
    if as_json:
        print_json([p.to_dict() for p in profiles])
        return
    table = Table("name", "RAM MiB", "usable MiB", "cores", "SIMD", "GB/s", "description")
    for p in profiles:
        table.add_row(p.name, str(p.ram_mb), str(p.available_mb), str(p.physical_cores), ",".join(p.simd),
                      f"{p.memory_bandwidth_gbs:g}", p.description)
    console.print(table)


@app.command("show")
def show_cmd(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One profile's fields."""
    profile = get_profile(name)
    if as_json:
        print_json(profile.to_dict())
        return
    table = Table(show_header=False)
    for k, v in profile.to_dict().items():
        table.add_row(k, str(v))
    console.print(table)


@app.command("detect")
def detect_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """A profile of this machine (psutil, /proc/cpuinfo, a short bandwidth probe)."""
    show = detect().to_dict()
    if as_json:
        print_json(show)
        return
    table = Table(show_header=False)
    for k, v in show.items():
        table.add_row(k, str(v))
    console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="profiles")
