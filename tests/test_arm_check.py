"""The emulated ARM leg's host-side pieces (no emulator needed): the guest/qemu RSS split read from smaps, the
rootfs cache key, the one-line errors when the tools are missing, and the CLI's usage errors."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_run.core.errors import ResourceError
from tools import arm_check, arm_rootfs, arm_rss

ROOT = Path(__file__).resolve().parents[1]


def test_smaps_split_counts_only_pages_inside_the_window() -> None:
    """A touched 8 MiB anonymous mapping, used as the 'guest window': exactly its pages are counted as guest."""
    size = 8 * 2**20
    buf = mmap.mmap(-1, size)
    try:
        for off in range(0, size, mmap.PAGESIZE):
            buf[off] = 1
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        guest, total = arm_rss.smaps_split(os.getpid(), base=base, size=size)
        assert guest == size // 1024
        assert total > guest
        untouched, _ = arm_rss.smaps_split(os.getpid(), base=base, size=size // 2)  # window smaller than the mapping
        assert untouched == 0
    finally:
        buf.close()


def test_rootfs_key_follows_suite_packages_and_mirror() -> None:
    key = arm_rootfs.rootfs_key()
    assert key == arm_rootfs.rootfs_key(packages=tuple(reversed(arm_rootfs.PACKAGES)))  # order does not matter
    assert key != arm_rootfs.rootfs_key(suite="bookworm")
    assert key != arm_rootfs.rootfs_key(packages=(*arm_rootfs.PACKAGES, "vim"))
    assert key != arm_rootfs.rootfs_key(mirror="http://example.invalid/debian")


def test_missing_tools_are_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ResourceError) as e:
        arm_rootfs.check_host()
    assert "mmdebstrap" in e.value.message and "qemu-aarch64-static" in e.value.message
    assert "install qemu-user-static binfmt-support mmdebstrap" in (e.value.hint or "")


def test_not_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ResourceError, match="needs root"):
        arm_rootfs.check_host()


def test_parse_json_reads_the_indented_object_after_other_output() -> None:
    assert arm_check.parse_json('note\n{\n  "text": " Paris",\n  "rc": 0\n}\n') == {"text": " Paris", "rc": 0}
    assert arm_check.parse_json("no json here") is None
    assert arm_check.parse_json("{ broken") is None


@pytest.mark.parametrize(("args", "needle"), [
    (["--cpus", "cortex-a9"], "unknown cpu cortex-a9"),
    (["--rss-ctx", "512,big"], "--rss-ctx"),
    (["--only", "clusters"], "--only 'clusters' is not a step"),
])
def test_cli_usage_errors(args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.arm_check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_every_board_runs_a_bundle_that_exists_and_expects_its_cores_features() -> None:
    from edge_run.profiles.devices import get_profile

    for board in arm_check.BOARDS.values():
        profile = get_profile(board.profile)
        assert profile.arch == "arm64"
        if board.cpu == arm_check.HOME_CPU[board.profile]:  # the bundle's own board: same features as the profile
            assert tuple(sorted(profile.simd)) == board.simd


def test_only_cluster_replaces_its_rows_and_keeps_the_full_legs_others(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def row(what: str, ok: bool = True, artifact: str = "") -> dict[str, object]:
        return {"cpu": "cortex-a72", "what": what, "artifact": artifact, "ok": ok}

    out = tmp_path / "arm_check.json"
    out.write_text(json.dumps({"leg_seconds": 1130, "rows": [row("install pi4-4gb bundle"), row("run ctx 512", True,
                                                                                            "Q8_0")], "failed": 0}))
    monkeypatch.setitem(arm_check.SETTINGS, "steps", ("cluster",))
    new = {"leg_seconds": 300, "cluster_step_seconds": 120.0, "failed": 1,
           "rows": [row("install pi4-4gb bundle"), row("cluster: x86 host + 2 workers", False, "Q4_K_M")]}
    merged = arm_check.merge_partial(out, new)
    assert [(r["what"], r["artifact"]) for r in merged["rows"]] == [
        ("run ctx 512", "Q8_0"), ("install pi4-4gb bundle", ""), ("cluster: x86 host + 2 workers", "Q4_K_M")]
    assert merged["leg_seconds"] == 1130 and merged["failed"] == 1 and merged["cluster_step_seconds"] == 120.0
    assert merged["partial"]["steps"] == ["cluster"] and merged["partial"]["seconds"] == 300


def test_the_cluster_step_runs_a_bundle_and_quant_the_leg_has() -> None:
    from tools import arm_cluster

    assert arm_check.CLUSTER_QUANT in arm_check.GGUF_QUANTS
    assert arm_check.HOME_CPU[arm_check.CLUSTER_PROFILE] == arm_cluster.WORKER_CPU
    assert arm_check.WORKER_INSTALL == ("--worker",)
