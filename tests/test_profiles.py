"""Device profiles: shipped ones load, user ones validate with clear errors, detect describes this machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.profiles.devices import detect, get_profile, list_profiles

from .conftest import CliResult

GOOD = """name = "mine"
description = "my board"
ram_mb = 2048
os_reserved_mb = 200
arch = "arm64"
core_type = "cortex-a55"
physical_cores = 4
simd = ["neon", "dotprod"]
memory_bandwidth_gbs = 6.0
"""


def test_shipped_profiles_cover_the_required_devices() -> None:
    names = {p.name for p in list_profiles()}
    assert {"pi-zero-2w", "pi-3b", "pi4-2gb", "pi4-4gb", "pi4-8gb", "pi5-4gb", "pi5-8gb", "pi5-16gb",
            "jetson-orin-nano-8gb", "laptop-x86-8gb", "laptop-x86-16gb", "macbook-m1-8gb"} <= names
    for p in list_profiles():
        text = Path(p.source).read_text()
        assert "Source" in text or "source" in text, f"{p.name} cites no source"
        assert 0 < p.available_mb < p.ram_mb


def test_user_profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUN_PROFILES", str(tmp_path))
    (tmp_path / "mine.toml").write_text(GOOD)
    assert get_profile("mine").simd == ("neon", "dotprod")
    assert "mine" in {p.name for p in list_profiles()}


def test_detect_describes_this_machine() -> None:
    p = detect()
    assert p.ram_mb > 1000 and p.physical_cores >= 1 and p.memory_bandwidth_gbs > 0  # a measurement
    assert p.arch in ("x86_64", "arm64")


BAD = [
    ("missing-field", GOOD.replace('arch = "arm64"\n', ""), "missing field 'arch'"),
    ("negative-ram", GOOD.replace("ram_mb = 2048", "ram_mb = -5"), "ram_mb must be positive"),
    ("unknown-key", GOOD + "turbo = true\n", "unknown key(s) turbo"),
    ("wrong-type", GOOD.replace("physical_cores = 4", 'physical_cores = "four"'), "wrong type"),
    ("bad-toml", GOOD.replace("ram_mb = 2048", "ram_mb = = 2"), "not valid TOML"),
    ("reserve-too-big", GOOD.replace("os_reserved_mb = 200", "os_reserved_mb = 4096"), "os_reserved_mb"),
    ("unknown-simd", GOOD.replace('"dotprod"', '"warp-drive"'), "unknown SIMD"),
]


@pytest.mark.parametrize("name,text,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_profile_gets_a_clear_error(name: str, text: str, needle: str, tmp_path: Path,
                                        cli: Callable[..., CliResult]) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    res = cli("profiles", "show", path)
    assert res.code == 3
    assert needle in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_unknown_profile_lists_the_known_ones(cli: Callable[..., CliResult]) -> None:
    res = cli("pick", "--profile", "pi9", "--models", ".")
    assert res.code == 3 and "pi4-4gb" in res.stderr


def test_profiles_cli(cli: Callable[..., CliResult]) -> None:
    assert cli("profiles", "list").code == 0
    res = cli("profiles", "show", "pi5-8gb", "--json")
    assert res.code == 0 and '"ram_mb": 8192' in res.stdout
