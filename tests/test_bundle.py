"""`edge-run bundle`: CPU baselines per profile, install.sh's checks, the wheel writer, the cross-built
llama-cpp-python wheel (slow: cross build, cached) and a whole Pi 4 bundle (slow: pip download).

The slow tests need cmake and Debian's aarch64 cross toolchain (apt: gcc-aarch64-linux-gnu
g++-aarch64-linux-gnu binutils-aarch64-linux-gnu); the cross-built wheel is cached across runs in the shared
``llama-cpp-python`` cache entry (tests/conftest.py), so only the first run pays for the build.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from edge_run.core.errors import InputError
from edge_run.profiles.devices import get_profile, list_profiles
from edge_run.runtime.bundle import BASELINES, baseline_for_profile, baseline_named, missing_features
from edge_run.runtime.bundle.baselines import best_baseline_for_cpu
from edge_run.runtime.bundle.build import render
from edge_run.runtime.bundle.elf import read_elf
from edge_run.runtime.bundle.wheel import write_wheel
from edge_run.runtime.bundle.wheelhouse import device_platforms

# Features lines as the Linux kernel prints them (arch/arm64/kernel/cpuinfo.c hwcap names). Pi 4: Cortex-A72
# (Armv8.0: no dotprod, no fp16 arithmetic); Pi 5: Cortex-A76 (Armv8.2 + dotprod + fp16). Lists as in Marcin
# Juszkiewicz's "AArch64 SoC features table" (marcin.juszkiewicz.com.pl, 2022-11-08), BCM2711 and BCM2712 rows.
PI4_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(4))
PI5_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    f"asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    f"CPU part\t: 0xd0b\nCPU revision\t: 1\n\n" for i in range(4))

# Every shipped profile's expected baseline (core type -> the Arm TRM's feature set); None = not buildable.
EXPECTED = {
    "pi-zero-2w": "armv8-a", "pi-3b": "armv8-a", "pi4-2gb": "armv8-a", "pi4-4gb": "armv8-a", "pi4-8gb": "armv8-a",
    "pi5-4gb": "armv8.2-a+dotprod+fp16", "pi5-8gb": "armv8.2-a+dotprod+fp16", "pi5-16gb": "armv8.2-a+dotprod+fp16",
    "jetson-orin-nano-8gb": "armv8.2-a+dotprod+fp16", "macbook-m1-8gb": "armv8.2-a+dotprod+fp16",
    "laptop-x86-8gb": None, "laptop-x86-16gb": None,
}


def test_every_shipped_profile_has_an_expected_baseline() -> None:
    assert {p.name for p in list_profiles()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_maps_to_baseline(name: str) -> None:
    profile = get_profile(name)
    if EXPECTED[name] is None:
        with pytest.raises(InputError, match="builds for 64-bit ARM boards only") as e:
            baseline_for_profile(profile)
        assert e.value.exit_code == 3 and "pi4-4gb" in e.value.one_line()
        return
    baseline = baseline_for_profile(profile)
    assert baseline.name == EXPECTED[name]
    assert baseline.profile_simd <= set(profile.simd)
    assert "i8mm" not in baseline.cpu_features  # no shipped profile lists i8mm


def test_i8mm_only_where_a_profile_lists_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = Path(get_profile("pi5-8gb").source).read_text(encoding="utf-8")
    (tmp_path / "board-i8mm.toml").write_text(text.replace('name = "pi5-8gb"', 'name = "board-i8mm"')
                                              .replace('"dotprod"]', '"dotprod", "i8mm"]'), encoding="utf-8")
    monkeypatch.setenv("EDGE_RUN_PROFILES", str(tmp_path))
    assert baseline_for_profile(get_profile("board-i8mm")).name == "armv8.6-a+dotprod+fp16+i8mm"


def test_baseline_rows_are_consistent() -> None:
    tags = [b.wheel_tag for b in BASELINES]
    assert len(set(tags)) == len(tags) and all(re.fullmatch(r"[a-z0-9]+", t) for t in tags)  # PEP 440 local label
    for b in BASELINES:
        assert baseline_named(b.name) is b and baseline_named(b.wheel_tag) is b
        assert {"fp", "asimd"} <= set(b.cpu_features)
    with pytest.raises(InputError):
        baseline_named("armv9-a")


def test_missing_features_from_cpuinfo() -> None:
    dotprod = baseline_named("armv8.2-a+dotprod+fp16")
    assert missing_features(dotprod, PI4_CPUINFO) == ["asimddp", "fphp", "asimdhp"]
    assert missing_features(dotprod, PI5_CPUINFO) == []
    assert missing_features(baseline_named("armv8-a"), PI4_CPUINFO) == []
    assert best_baseline_for_cpu(PI4_CPUINFO).name == "armv8-a"
    assert best_baseline_for_cpu(PI5_CPUINFO).name == "armv8.2-a+dotprod+fp16"
    # one core without dotprod (a big.LITTLE mix) is enough to refuse
    mixed = PI5_CPUINFO + PI4_CPUINFO.split("\n\n")[0]
    assert "asimddp" in missing_features(dotprod, mixed)
    assert missing_features(dotprod, "model name : x86") == list(dotprod.cpu_features)


# ------------------------------------------------------------------------------------- install.sh checks

def _fake_bundle(tmp_path: Path, baseline: str, profile: str) -> Path:
    """install.sh as a bundle writes it, beside a one-wheel wheelhouse and SHA256SUMS (nothing else)."""
    b = tmp_path / "bundle"
    (b / "wheels").mkdir(parents=True)
    wheel = b / "wheels" / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    (b / "SHA256SUMS").write_text(f"{hashlib.sha256(wheel.read_bytes()).hexdigest()}  wheels/{wheel.name}\n")
    text = render("install.sh", baseline_named(baseline), profile, "3.13", "m.gguf", "edge-run[serve]==0.1.0")
    (b / "install.sh").write_text(text)
    return b


def _install_sh(bundle: Path, cpuinfo: str, machine: str = "aarch64", **env: str) -> subprocess.CompletedProcess:
    info = bundle.parent / "cpuinfo"
    info.write_text(cpuinfo)
    full = {**os.environ, "EDGE_RUN_CPUINFO": str(info), "EDGE_RUN_MACHINE": machine, "EDGE_RUN_CHECK_ONLY": "1",
            "EDGE_RUN_PREFIX": str(bundle.parent / "prefix"), **env}
    return subprocess.run(["sh", str(bundle / "install.sh")], capture_output=True, text=True, env=full, timeout=60)


def test_install_sh_is_valid_posix_sh(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path, "armv8-a", "pi4-4gb")
    assert subprocess.run(["sh", "-n", str(b / "install.sh")], capture_output=True).returncode == 0
    assert "@" not in re.sub(r"@PREFIX@|@WORKER_ARGS@|\[serve\]==0\.1\.0", "", (b / "install.sh").read_text())


def test_install_sh_refuses_a_pi5_bundle_on_a_pi4(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path, "armv8.2-a+dotprod+fp16", "pi5-8gb")
    r = _install_sh(b, PI4_CPUINFO)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this CPU lacks asimddp fphp asimdhp")
    assert "SIGILL" in lines[0] and "armv8-a build instead" in lines[0] and "pi4-4gb" in lines[0]
    assert not (tmp_path / "prefix").exists()


def test_install_sh_accepts_matching_cpus(tmp_path: Path) -> None:
    pi5 = _fake_bundle(tmp_path / "a", "armv8.2-a+dotprod+fp16", "pi5-8gb")
    assert _install_sh(pi5, PI5_CPUINFO).returncode == 0
    pi4 = _fake_bundle(tmp_path / "b", "armv8-a", "pi4-4gb")
    for info in (PI4_CPUINFO, PI5_CPUINFO):  # an armv8-a build runs on both
        r = _install_sh(pi4, info)
        assert r.returncode == 0 and r.stdout.startswith("ok: CPU has fp asimd"), r.stderr


def test_install_sh_skip_cpu_check_gets_past_the_refusal(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path, "armv8.2-a+dotprod+fp16", "pi5-8gb")
    assert _install_sh(b, PI4_CPUINFO, EDGE_RUN_SKIP_CPU_CHECK="1").returncode == 0


def test_install_sh_refuses_other_machines_and_no_cpuinfo(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path, "armv8-a", "pi4-4gb")
    r = _install_sh(b, PI4_CPUINFO, machine="x86_64")
    assert r.returncode == 3 and "aarch64" in r.stderr and "x86_64" in r.stderr
    r = _install_sh(b, "processor : 0\nmodel name : something\n")
    assert r.returncode == 3 and "no 'Features' line" in r.stderr


def test_install_sh_checks_sha256(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path, "armv8-a", "pi4-4gb")
    wheel = next((b / "wheels").iterdir())
    wheel.write_bytes(b"tampered")
    r = _install_sh(b, PI4_CPUINFO)
    assert r.returncode == 5 and f"wheels/{wheel.name} does not match SHA256SUMS" in r.stderr
    b2 = _fake_bundle(tmp_path / "x", "armv8-a", "pi4-4gb")
    (b2 / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"smuggled")
    r = _install_sh(b2, PI4_CPUINFO)
    assert r.returncode == 5 and "extra-1.0-py3-none-any.whl is not listed in SHA256SUMS" in r.stderr


# ------------------------------------------------------------------------------------- wheel writer, ELF reader

def _check_record(whl: Path) -> None:
    """Every file's RECORD row has its sha256 (urlsafe base64, no padding) and size (PEP 376/427)."""
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = {line.split(",")[0]: line.split(",")[1:] for line in zf.read(record).decode().splitlines()}
        assert set(rows) == set(names)
        for name in names:
            if name == record:
                assert rows[name] == ["", ""]
                continue
            data = zf.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows[name] == [f"sha256={digest}", str(len(data))], name


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_written_wheel_installs_with_pip(tmp_path: Path, python: str) -> None:
    meta = "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 0.0.0\n"
    whl = write_wheel(tmp_path, "demo-pkg", "1.0+armv8a", "py3-none-manylinux_2_17_aarch64",
                      {"demo_pkg/__init__.py": b"X = 1\n", "demo_pkg/lib/libx.so": b"\x7fELF fake"},
                      meta.replace("0.0.0", "1.0+armv8a"))
    assert whl.name == "demo_pkg-1.0+armv8a-py3-none-manylinux_2_17_aarch64.whl"
    _check_record(whl)
    target = tmp_path / f"site-{python}"
    platforms = [arg for tag in device_platforms() for arg in ("--platform", tag)]
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--only-binary", ":all:",
                        *platforms, "--python-version", python, "--target", str(target),
                        "--disable-pip-version-check", "-q", str(whl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (target / "demo_pkg" / "lib" / "libx.so").read_bytes() == b"\x7fELF fake"


def test_elf_reader_agrees_with_readelf() -> None:
    lib = Path(sys.executable).resolve()
    readelf = shutil.which("readelf")
    assert readelf, "binutils' readelf is needed as the reference"
    info = read_elf(lib)
    out = subprocess.run([readelf, "-d", "-V", str(lib)], capture_output=True, text=True).stdout
    assert info.machine == {"x86_64": "x86_64", "aarch64": "aarch64"}[os.uname().machine]
    assert list(info.needed) == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    versions = set(re.findall(r"Name: (GLIBC_[\d.]+)", out))
    assert versions == {v for names in info.versions.values() for v in names if v.startswith("GLIBC_")}


# ------------------------------------------------------------------------------------- slow: the cross build

def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install binutils-aarch64-linux-gnu"
    return path


@pytest.fixture(scope="session")
def armv8a_wheel() -> Path:
    from edge_run.runtime.bundle import build_llama_wheel

    return build_llama_wheel(baseline_named("armv8-a"))


@pytest.mark.slow
def test_cross_built_wheel_is_aarch64_without_dotprod_or_openmp(armv8a_wheel: Path, tmp_path: Path) -> None:
    assert re.fullmatch(r"llama_cpp_python-0\.3\.36\+armv8a-py3-none-manylinux_2_\d+_aarch64\.whl", armv8a_wheel.name)
    _check_record(armv8a_wheel)
    with zipfile.ZipFile(armv8a_wheel) as zf:
        zf.extractall(tmp_path)
        names = zf.namelist()
    import llama_cpp  # the x86 copy: the wheel ships the same Python package

    x86_py = sorted(p.relative_to(Path(llama_cpp.__file__).parent).as_posix()
                    for p in Path(llama_cpp.__file__).parent.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(n[len("llama_cpp/"):] for n in names if n.startswith("llama_cpp/") and n.endswith(".py")) == x86_py
    libs = sorted((tmp_path / "llama_cpp" / "lib").glob("lib*.so*"))
    shipped = {p.name for p in libs}
    assert {"libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libggml-rpc.so"} <= shipped
    # llama.cpp's RPC backend for `edge-run worker` on the board: aarch64, linked into libggml, stamped
    libdir = tmp_path / "llama_cpp" / "lib"
    rpc = read_elf(libdir / "libggml-rpc.so")
    assert rpc.machine == "aarch64" and "libggml-base.so" in rpc.needed
    assert "libggml-rpc.so" in read_elf(libdir / "libggml.so").needed
    from edge_run.runtime.cluster.build import read_stamp

    stamp = read_stamp(libdir, "0.3.36+armv8a")
    assert stamp is not None and stamp.protocol == (7, 0, 0) and re.fullmatch(r"\d+\.\d+\.\d+", stamp.ggml_version)
    readelf, objdump = _tool("aarch64-linux-gnu-readelf"), _tool("aarch64-linux-gnu-objdump")
    for lib in libs:
        header = subprocess.run([readelf, "-h", "-d", str(lib)], capture_output=True, text=True).stdout
        assert "AArch64" in header, lib.name
        assert "libgomp" not in header and "RUNPATH" in header and "$ORIGIN" in header, lib.name
    syms = subprocess.run([readelf, "-W", "--dyn-syms", str(libdir / "libggml-rpc.so")], capture_output=True,
                          text=True).stdout
    assert "ggml_backend_rpc_start_server" in syms and "ggml_backend_rpc_add_server" in syms
    cpu = subprocess.run([objdump, "-d", str(tmp_path / "llama_cpp" / "lib" / "libggml-cpu.so")],
                         capture_output=True, text=True).stdout
    assert "fmla" in cpu  # NEON code is there ...
    assert not re.search(r"\s(sdot|udot|smmla|ummla|usmmla)\s", cpu)  # ... but no Armv8.2+ dot products


@pytest.mark.slow
def test_cross_build_cache_hit_is_fast(armv8a_wheel: Path) -> None:
    import time

    from edge_run.runtime.bundle import build_llama_wheel

    t = time.monotonic()
    assert build_llama_wheel(baseline_named("armv8-a")).resolve() == armv8a_wheel.resolve()
    assert time.monotonic() - t < 2.0
    info = json.loads((armv8a_wheel.parent / "build.json").read_text())
    assert info["baseline"] == "armv8-a" and info["llama_cpp_python"] == "0.3.36" and info["format"] == 2
    assert not [p for p in armv8a_wheel.parent.parent.iterdir() if p.name.startswith(".edge-run-")]



def test_a_wheel_cached_before_rpc_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.runtime.bundle.llama_wheel import WHEEL_FORMAT, cached_llama_wheel

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path))
    folder = tmp_path / "llama-cpp-python" / "0.3.36" / "armv8a"
    folder.mkdir(parents=True)
    (folder / "llama_cpp_python-0.3.36+armv8a-py3-none-manylinux_2_34_aarch64.whl").write_bytes(b"old")
    (folder / "build.json").write_text(json.dumps({"baseline": "armv8-a"}))  # written before ggml-rpc was in it
    assert cached_llama_wheel(baseline_named("armv8-a"), "0.3.36") is None
    (folder / "build.json").write_text(json.dumps({"format": WHEEL_FORMAT}))
    assert cached_llama_wheel(baseline_named("armv8-a"), "0.3.36") is not None


# ------------------------------------------------------------------------------------- bad input (no build)

def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".edge-run-")) if folder.is_dir() else []


def _small_board(folder: Path) -> None:
    """A user profile like a Pi 4 with 128 MiB of RAM: a budget of 48 MiB, less than the tiny model needs."""
    text = Path(get_profile("pi4-4gb").source).read_text(encoding="utf-8")
    text = re.sub(r"(?m)^name = .*$", 'name = "tiny-board"', text)
    text = re.sub(r"(?m)^ram_mb = .*$", "ram_mb = 128", text)
    text = re.sub(r"(?m)^os_reserved_mb = .*$", "os_reserved_mb = 16", text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-board.toml").write_text(text, encoding="utf-8")


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--profile", "pi9-1tb"], 3, "no profile named 'pi9-1tb'"),
    (["--profile", "laptop-x86-8gb"], 3, "builds for 64-bit ARM boards only"),
    (["--profile", "pi4-4gb", "--python", "3.7"], 3, "edge-run needs Python >= 3.11"),
    (["--profile", "pi4-4gb", "--python", "three"], 2, "is not a Python version"),
    (["--profile", "tiny-board"], 4, "nothing fits tiny-board"),
])
def test_bundle_bad_input(cli, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          args: list[str], code: int, needle: str) -> None:
    _small_board(tmp_path / "profiles")
    monkeypatch.setenv("EDGE_RUN_PROFILES", str(tmp_path / "profiles"))
    out = tmp_path / "out" / "bundle"
    r = cli("bundle", tiny_gguf, "--out", out, *args)
    assert r.code == code, r.stderr
    assert r.stderr.startswith("error: ") and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("bundle.tar.gz").exists() and not _leftovers(out.parent)


def test_bundle_needs_artifact_or_models(cli, tiny_gguf: Path, tmp_path: Path) -> None:
    r = cli("bundle", "--profile", "pi4-4gb", "--out", tmp_path / "b")
    assert r.code == 2 and "pass either an ARTIFACT or --models DIR" in r.stderr
    r = cli("bundle", tiny_gguf, "--models", tiny_gguf.parent, "--profile", "pi4-4gb", "--out", tmp_path / "b")
    assert r.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("bundle", "--models", empty, "--profile", "pi4-4gb", "--out", tmp_path / "b")
    assert r.code == 2 and "no converted artifact" in r.stderr


def test_bundle_refuses_existing_out_without_force(cli, tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out)
    assert r.code == 4 and "already exists and is not a bundle edge-run wrote (it has no readable SHA256SUMS)" \
        in r.stderr and "--force only ever replaces a previous bundle" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bundle_without_toolchain_says_what_to_install(cli, tiny_gguf: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"  # cmake but no cross compiler on PATH
    bin_dir.mkdir()
    (bin_dir / "cmake").symlink_to(shutil.which("cmake"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("EDGE_RUN_TOOLCHAIN", "gcc")
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "empty-cache"))  # no cached wheel: a build is needed
    out = tmp_path / "out" / "b"
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out)
    assert r.code == 4, r.stderr
    assert r.stderr.strip() == ("error: no aarch64 cross compiler found to build llama.cpp for the device. install "
                                "one: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu")
    assert not out.exists() and not _leftovers(out.parent)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out)
    assert r.code == 4 and "cmake is not installed" in r.stderr


# ------------------------------------------------------------------------------------- slow: a whole bundle

def _texts(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, with wheels unpacked (compressed members would hide a path from a grep)."""
    out: dict[str, bytes] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if p.suffix == ".whl":
            with zipfile.ZipFile(p) as zf:
                out.update({f"{rel}!{n}": zf.read(n) for n in zf.namelist()})
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.mark.slow
def test_pi4_bundle(cli, armv8a_wheel: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    src = tmp_path / "models"
    shutil.copytree(tiny_gguf.parent, src)
    out = tmp_path / "deploy" / "pi4"
    r = cli("bundle", "--models", src, "--profile", "pi4-4gb", "--out", out, "--python", "3.11")
    assert r.code == 0, r.stderr
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"install.sh", "edge-run.service", "edge-run-worker.service", "README.txt", "SHA256SUMS",
            "models/tiny.Q8_0.gguf", "models/tiny.Q8_0.gguf.manifest.json", f"wheels/{armv8a_wheel.name}"} <= names
    wheels = [n for n in names if n.startswith("wheels/")]
    assert any(re.match(r"wheels/edge_run-.*-py3-none-any\.whl$", n) for n in wheels)
    assert any(re.match(r"wheels/numpy-.*-cp311-cp311-manylinux.*aarch64.*\.whl$", n) for n in wheels)
    assert any(n.startswith("wheels/uvicorn-") for n in wheels) and any(n.startswith("wheels/pip-") for n in wheels)
    assert not any("x86_64" in n or "llama_cpp_python-0.3.36-" in n for n in wheels)
    # checksums: sha256sum (coreutils) agrees with every line, and every file but install.sh is listed
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()} == \
        names - {"install.sh", "SHA256SUMS"}
    manifest = json.loads((out / "models" / "tiny.Q8_0.gguf.manifest.json").read_text())
    assert "path" not in manifest["source"] and manifest["sha256"]
    unit = (out / "edge-run.service").read_text()
    assert re.search(r"ExecStart=@PREFIX@/venv/bin/edge-run serve \"@PREFIX@/models/tiny\.Q8_0\.gguf\" "
                     r"--host 127\.0\.0\.1 --threads 4 --ctx \d+\n", unit) and "Restart=on-failure" in unit
    readme = (out / "README.txt").read_text()
    assert "pi4-4gb" in readme and "tiny Q8_0" in readme and "armv8-a" in readme and "budget" in readme
    # no path of this machine anywhere, wheels unpacked
    here = [str(tmp_path), str(Path.home()), str(Path(__file__).resolve().parents[1]), str(armv8a_wheel.parent),
            os.environ.get("EDGE_RUN_CACHE", "/nonexistent")]
    for rel, data in _texts(out).items():
        for path in here:
            assert path.encode() not in data, f"{rel} contains {path}"
    # the tarball holds the same files under the folder's name
    with tarfile.open(out.with_name("pi4.tar.gz")) as tf:
        members = {m.name for m in tf.getmembers() if m.isfile()}
    assert members == {f"pi4/{n}" for n in names}
    assert not _leftovers(out.parent)
    # install.sh's checks pass on a Pi 4 and refuse nothing; a second bundle hits every cache
    info = tmp_path / "cpuinfo"
    info.write_text(PI4_CPUINFO)
    env = {**os.environ, "EDGE_RUN_CPUINFO": str(info), "EDGE_RUN_MACHINE": "aarch64", "EDGE_RUN_CHECK_ONLY": "1"}
    ok = subprocess.run(["sh", str(out / "install.sh")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    r = cli("bundle", "--models", src, "--profile", "pi4-4gb", "--out", out, "--python", "3.11")
    assert r.code == 4 and "already exists" in r.stderr
    r = cli("bundle", "--models", src, "--profile", "pi4-4gb", "--out", out, "--python", "3.13", "--force")
    assert r.code == 0, r.stderr
    assert any(p.name.startswith("numpy-") and "cp313" in p.name for p in (out / "wheels").iterdir())
    assert not any("cp311" in p.name for p in (out / "wheels").iterdir()) and not _leftovers(out.parent)
    # a file of the user's in the bundle folder: --force no longer takes it for a bundle
    (out / "notes.txt").write_text("mine")
    r = cli("bundle", "--models", src, "--profile", "pi4-4gb", "--out", out, "--python", "3.13", "--force")
    assert r.code == 4 and "it holds notes.txt" in r.stderr and (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_interrupted_bundle_leaves_nothing(armv8a_wheel: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "deploy" / "b"
    proc = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "bundle", str(tiny_gguf),
                             "--profile", "pi4-4gb", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _leftovers(out.parent) and time.monotonic() < deadline:  # wait until it is writing
        time.sleep(0.1)
    assert _leftovers(out.parent), "the bundle never started writing"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not out.exists() and not out.with_name("b.tar.gz").exists() and not _leftovers(out.parent)
    # SIGKILL (of the whole process group: pip children too) leaves the temp folder; the next bundle removes it
    proc = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "bundle", str(tiny_gguf),
                             "--profile", "pi4-4gb", "--out", str(out)], stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not _leftovers(out.parent) and time.monotonic() < deadline + 60:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the killed group's processes are gone
    assert _leftovers(out.parent)
    r = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "bundle", str(tiny_gguf),
                        "--profile", "laptop-x86-8gb", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 3 and not _leftovers(out.parent) and not out.exists()


@pytest.mark.slow
def test_python_without_wheels_on_pypi_is_an_input_error(tmp_path: Path) -> None:
    """Past the >= 3.11 check, pip finds no aarch64 numpy for a Python that does not exist: one line, exit 3."""
    from packaging.requirements import Requirement

    from edge_run.runtime.bundle.wheelhouse import download_dependencies

    with pytest.raises(InputError, match=r"PyPI has no linux-aarch64 wheel of numpy.* for Python 3\.99") as e:
        download_dependencies([Requirement("numpy>=1.26")], (3, 99), tmp_path)
    assert e.value.exit_code == 3 and "--python 3.13" in e.value.one_line()
