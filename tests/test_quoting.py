"""The quoting layer (src/edge_run/core/quoting.py) against a corpus of hostile names.

Each language is checked by its real reader where this machine has one (sh and dash for install.sh,
systemd-analyze for the unit, tomllib, GNU sha256sum, markdown-it) and, for systemd, by a parser written here
from systemd.service(5) "Command lines" and systemd.unit(5) "Specifiers", since no offline tool prints the
argv systemd would pass: quotes and C escapes (\\xNN is one byte) first, then ``%`` specifiers (``%%`` is a
percent sign), then at exec time ``$NAME``/``${NAME}`` (``$$`` is a dollar sign).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from edge_run.core.errors import ProfileError, UsageError
from edge_run.core.quoting import (
    BYTES_ERRORS,
    MAX_NAME_CHARS,
    artifact_base_name,
    check_name,
    display_text,
    markdown_text,
    sh_quote,
    sh_word,
    sha256sums_line,
    sha256sums_name,
    systemd_escape,
    systemd_text,
    systemd_word,
    toml_string,
)
from edge_run.profiles.devices import parse_profile
from edge_run.runtime.bundle import baseline_named
from edge_run.runtime.bundle.build import render

MARK = "MARKER"  # replaced by an absolute path per test: a name that runs code would create that file
HOSTILE = [
    "it's", 'say "hi"', "$(touch MARKER)", "`touch MARKER`", "a;touch MARKER", "x' ; touch MARKER ; echo '",
    "x\" ; touch MARKER ; echo \"", "new\nline", "m\nExecStartPre=+/bin/touch MARKER", "%h", "100%", "%%", "a b  c",
    "tab\there", "back\\slash", "trailing\\", "\\x41\\n", "$HOME", "${HOME}", "$$", "$", "@PREFIX@", "@CTX@x",
    "caf\udce9", "\udcff\udcfe", "café ü 日本", "\x1b[31mred\x1b[0m", "\u202egnp.exe", "-rf", "--force", "..", ".",
    "x" * 5000, "\r\n", "*", "?[a]", "~root", "#comment", ";", "a\\;", "\x7f\x01", "line\u2028sep", "|pipe&amp",
    "<b>bold</b> *em* [l](http://x) `c` _u_", "\\", "'", '"', " lead and trail ", "!history", "{a,b}",
]
ORDINARY = ["smollm2-135m", "SmolLM2-135M-Instruct", "qwen2.5-0.5b", "Llama-3.2-1B+lora", "gemma_3_270m", "a", "日本語",
            "x" * MAX_NAME_CHARS, "phi3.Q4_K_M"]


def _corpus(marker: Path, drop: str = "") -> list[str]:
    return [v.replace(MARK, str(marker)) for v in HOSTILE if not any(c in v for c in drop)]


def _shells() -> list[str]:
    return [s for s in ("sh", "dash", "bash") if shutil.which(s)]


# ------------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_pass(name: str) -> None:
    assert check_name(name) == name
    assert artifact_base_name(None, name) == name


@pytest.mark.parametrize("name", [*HOSTILE, "", "a/b", "x" * (MAX_NAME_CHARS + 1), "\x00", "é" * 99 + "\udce9"])
def test_hostile_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(UsageError) as e:
        check_name(name)
    line = e.value.one_line()
    assert e.value.exit_code == 2 and "\n" not in line and len(line) < 400 and "--name" in line
    with pytest.raises(ProfileError) as pe:
        check_name(name, "board.toml: name", ProfileError)
    assert pe.value.exit_code == 3


def test_name_messages_say_what_is_wrong() -> None:
    for name, fragment in [("a b", "contains a space"), ("caf\udce9", "bytes that are not UTF-8"),
                           ("x\ny", "contains a newline"), ("-rf", "starts with '-'"),
                           ("../x", "not a plain file name"),
                           ("x" * 101, "is 101 characters long"), ("a$b", "contains '$'"), ("\x1b", "U+001B")]:
        with pytest.raises(UsageError, match=re.escape(fragment)):
            check_name(name)
    with pytest.raises(UsageError) as e:
        artifact_base_name(None, "My Model")
    assert re.search("the checkpoint folder's name 'My Model' contains a space.*--name", e.value.one_line())


def test_profile_names_and_text_fields_are_checked() -> None:
    good = {"name": "board", "description": "a board", "ram_mb": 2048, "os_reserved_mb": 100, "arch": "arm64",
            "core_type": "cortex-a53", "physical_cores": 4, "simd": ["neon"], "memory_bandwidth_gbs": 2.0}
    assert parse_profile(good, "b.toml").name == "board"
    for key, value, fragment in [("name", "pi$(id)", "b.toml: name 'pi$(id)' contains '$'"),
                                 ("name", "a\nb", "contains a newline"), ("name", "%h", "contains '%'"),
                                 ("description", "x\x1b[2J", "b.toml: description"),
                                 ("core_type", "a\nExecStartPre=x", "contains a newline")]:
        with pytest.raises(ProfileError, match=re.escape(fragment)) as e:
            parse_profile({**good, key: value}, "b.toml")
        assert "\n" not in e.value.one_line()


# ------------------------------------------------------------------------------------------------ POSIX sh

@pytest.mark.parametrize("shell", _shells())
def test_sh_quote_round_trips_through_a_real_shell(shell: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    corpus = _corpus(marker)
    for value in corpus:
        script = f"V={sh_quote(value)}\nprintf '%s' \"$V\"; printf '|'; printf '%s' {sh_word(value)}"
        r = subprocess.run([shell, "-c", script], capture_output=True, cwd=tmp_path, timeout=10)
        expect = value.encode("utf-8", BYTES_ERRORS)
        assert r.returncode == 0 and r.stdout == expect + b"|" + expect, (shell, value, r.stderr)
    assert not marker.exists()


def test_sh_quote_refuses_nul_and_keeps_words_plain_when_it_can() -> None:
    with pytest.raises(UsageError, match="NUL"):
        sh_quote("a\x00b")
    assert sh_word("models/tiny.Q8_0.gguf") == "models/tiny.Q8_0.gguf"
    assert sh_word("it's") == "'it'\"'\"'s'" and "\\" not in sh_quote("it's")
    assert sh_word("") == "''"


def _fake_bundle(folder: Path, artifact: str, profile: str) -> Path:
    import hashlib

    (folder / "wheels").mkdir(parents=True)
    wheel = folder / "wheels" / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"w")
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(b'w').hexdigest()}  wheels/{wheel.name}\n")
    text = render("install.sh", baseline_named("armv8-a"), profile, "3.13", artifact, "edge-run[serve]==0.1.0")
    (folder / "install.sh").write_bytes(text.encode("utf-8", BYTES_ERRORS))
    return folder / "install.sh"


def test_install_sh_with_hostile_names_parses_and_never_runs_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nFeatures : fp asimd evtstrm crc32 cpuid\n\n")
    corpus = [v for v in _corpus(marker) if "\x00" not in v]
    for i, value in enumerate(corpus):
        script = _fake_bundle(tmp_path / f"b{i}", value, value)
        for shell in ("sh", "dash"):
            if shutil.which(shell):
                r = subprocess.run([shell, "-n", str(script)], capture_output=True)
                assert r.returncode == 0, (shell, value, r.stderr)
        # the variables block, read by sh, gives back each exact value
        head = script.read_bytes().split(b"\nHERE=")[0]
        r = subprocess.run(["sh", "-c", head.decode("utf-8", BYTES_ERRORS) + '\nprintf "%s|%s" "$ARTIFACT" "$PROFILE"'],
                           capture_output=True)
        expect = value.encode("utf-8", BYTES_ERRORS)
        assert r.stdout == expect + b"|" + expect, value
        env = {"PATH": "/usr/bin:/bin", "EDGE_RUN_CPUINFO": str(info), "EDGE_RUN_CHECK_ONLY": "1",
               "EDGE_RUN_PREFIX": str(tmp_path / "prefix")}
        wrong = subprocess.run(["sh", str(script)], capture_output=True, env={**env, "EDGE_RUN_MACHINE": "x86_64"})
        assert wrong.returncode == 3 and wrong.stderr.startswith(b"error: this bundle is for 64-bit ARM"), value
        ok = subprocess.run(["sh", str(script)], capture_output=True, env={**env, "EDGE_RUN_MACHINE": "aarch64"})
        if value in ("", ".", "..") or "/" in value:
            assert ok.returncode == 5 and b"names no plain model file" in ok.stderr, value
        else:
            assert ok.returncode == 0 and ok.stdout.startswith(b"ok: CPU has fp asimd"), (value, ok.stderr)
    assert not marker.exists()


@pytest.mark.parametrize(("prefix", "code"), [("relative/dir", 2), ("/opt/a b", 2), ("/opt/$(touch x)", 2),
                                              ("/opt/a#b", 2), ("/opt/edge-run_2+x.y", 0)])
def test_install_sh_checks_the_prefix_it_puts_into_the_unit(tmp_path: Path, prefix: str, code: int) -> None:
    script = _fake_bundle(tmp_path / "b", "m.gguf", "pi4-4gb")
    info = tmp_path / "cpuinfo"
    info.write_text("Features : fp asimd\n")
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "EDGE_RUN_CPUINFO": str(info), "EDGE_RUN_CHECK_ONLY": "1",
                            "EDGE_RUN_MACHINE": "aarch64", "EDGE_RUN_PREFIX": prefix})
    assert r.returncode == code, r.stderr
    if code:
        assert r.stderr.startswith("error: EDGE_RUN_PREFIX") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ systemd

_C_ESCAPES = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v", "\\": b"\\",
              '"': b'"', "'": b"'", "s": b" "}


class Expanded(Exception):
    """systemd would substitute something here: a specifier or an environment variable."""


def systemd_words(line: str) -> list[bytes]:
    """The words of an ExecStart= value after unquoting and C unescaping (systemd.syntax(7) quoting rules)."""
    words, i, n = [], 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return words
        word, quote = bytearray(), None
        if line[i] in "\"'":
            quote, i = line[i], i + 1
        while i < n:
            c = line[i]
            if quote and c == quote:
                i += 1
                quote = None
                if i < n and line[i] not in " \t":
                    raise ValueError("a closing quote must end the word")
                break
            if not quote and c in " \t":
                break
            if c == "\\":
                nxt = line[i + 1]
                if nxt in _C_ESCAPES:
                    word += _C_ESCAPES[nxt]
                    i += 2
                elif nxt == "x":
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                elif nxt in "01234567":
                    word.append(int(line[i + 1:i + 4], 8))
                    i += 4
                else:
                    raise ValueError(f"unknown escape \\{nxt}")
            else:
                word += c.encode("utf-8")
                i += 1
        if quote:
            raise ValueError("unterminated quote")
        words.append(bytes(word))


def resolve_specifiers(word: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(word):
        if word[i:i + 1] == b"%":
            if word[i + 1:i + 2] != b"%":
                raise Expanded(word[i:i + 2])
            out += b"%"
            i += 2
        else:
            out.append(word[i])
            i += 1
    return bytes(out)


def resolve_environment(word: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(word):
        if word[i:i + 1] == b"$":
            if word[i + 1:i + 2] != b"$":
                raise Expanded(word[i:i + 2])
            out += b"$"
            i += 2
        else:
            out.append(word[i])
            i += 1
    return bytes(out)


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file: comments skipped, a line ending in an odd number of backslashes
    joined to the next (systemd.syntax(7))."""
    settings, section, pending = [], "", ""
    for raw in text.split("\n"):
        line = pending + raw
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending = line[:-1] + " "
            continue
        pending = ""
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            section = stripped.strip("[]")
            continue
        key, _, value = stripped.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def test_systemd_word_round_trips_by_the_documented_rules(tmp_path: Path) -> None:
    for value in _corpus(tmp_path / "ran", drop="\x00"):
        (word,) = systemd_words(systemd_word(value))
        assert resolve_environment(resolve_specifiers(word)) == value.encode("utf-8", BYTES_ERRORS), value
        assert systemd_word(value).isascii() and "@" not in systemd_word(value)
    with pytest.raises(UsageError, match="NUL"):
        systemd_word("a\x00")


def test_systemd_text_is_one_line_without_specifiers() -> None:
    for value in HOSTILE:
        text = systemd_text(value)
        assert "\n" not in text and "\r" not in text and not (len(text) - len(text.rstrip("\\"))) % 2, value
        shown = resolve_specifiers(text.encode("utf-8")).decode()
        assert shown == display_text(value), value


def _unit(tmp_path: Path, artifact: str, prefix: Path) -> str:
    text = render("edge-run.service", baseline_named("armv8-a"), "pi4-4gb", "3.13", artifact, "", 4, 2048)
    return "\n".join(line.replace("@PREFIX@", str(prefix)) if line.startswith("ExecStart=") else line
                     for line in text.split("\n"))  # what install.sh's sed does


def test_rendered_unit_has_one_exec_start_holding_the_exact_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plain = [(s, k) for s, k, _ in unit_settings(_unit(tmp_path, "m.gguf", Path("/opt/edge-run")))]
    assert len(plain) == 13
    for value in _corpus(marker, drop="\x00"):
        unit = _unit(tmp_path, value, Path("/opt/edge-run"))
        settings = unit_settings(unit)
        keys = [(s, k) for s, k, _ in settings]
        assert keys.count(("Service", "ExecStart")) == 1 and ("Service", "ExecStartPre") not in keys, value
        assert keys == plain, (value, keys)
        exec_start = next(v for s, k, v in settings if k == "ExecStart")
        words = [resolve_specifiers(w) for w in systemd_words(exec_start)]
        assert words[0] == b"/opt/edge-run/venv/bin/edge-run"
        argv = [resolve_environment(w) for w in words[1:]]
        assert argv == [b"serve", b"/opt/edge-run/models/" + value.encode("utf-8", BYTES_ERRORS), b"--host",
                        b"127.0.0.1", b"--threads", b"4", b"--ctx", b"2048"], value
        description = next(v for s, k, v in settings if k == "Description")
        resolve_specifiers(description.encode())  # no specifier left in it


def test_systemd_analyze_accepts_every_rendered_unit_silently(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "venv" / "bin").mkdir(parents=True)
    exe = prefix / "venv" / "bin" / "edge-run"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for i, value in enumerate(_corpus(tmp_path / "ran", drop="\x00")):
        (units / f"edge-run-{i}.service").write_text(_unit(tmp_path, value, prefix), encoding="utf-8")
    r = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, units.iterdir()))], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr[:2000]


def test_systemd_itself_unescapes_like_the_test_parser(tmp_path: Path) -> None:
    """systemd prints the executable path it parsed when it cannot run it: values systemd allows in a path
    (no quote, backslash or control character; no '/', which it simplifies) come back exactly as the test's
    parser says."""
    checked = 0
    for i, value in enumerate(_corpus(tmp_path / "ran", drop="'\"\\\x00")):
        if any(ord(c) < 32 or c == "\x7f" or "\udc80" <= c <= "\udcff" or c in "\u2028\u202e" for c in value) \
                or len(value) > 200 or value in (".", "..") or "/" in value:  # systemd simplifies a path
            continue
        word = '"/nonexistent/' + systemd_escape(value) + '"'
        unit = tmp_path / f"probe-{i}.service"
        unit.write_text(f"[Service]\nExecStart={word}\n", encoding="ascii")
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, timeout=60)
        (parsed,) = systemd_words(word)
        expect = resolve_specifiers(parsed)  # the executable path: no $ substitution there
        assert b"Command " + expect + b" is not executable" in r.stderr, (value, r.stderr)
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------------------------------------ TOML

def test_toml_string_round_trips_through_tomllib(tmp_path: Path) -> None:
    for value in _corpus(tmp_path / "ran"):
        if any("\udc80" <= c <= "\udcff" for c in value):
            with pytest.raises(UsageError, match="not UTF-8"):
                toml_string(value)
            continue
        assert tomllib.loads(f"name = {toml_string(value)}\n") == {"name": value}, value
    assert tomllib.loads(f"x = {toml_string(chr(0))}") == {"x": "\x00"}


# ------------------------------------------------------------------------------------------------ SHA256SUMS

def test_sha256sums_lines_are_read_back_by_sha256sum(tmp_path: Path) -> None:
    import hashlib

    files = tmp_path / "files"
    files.mkdir()
    lines = []
    for value in _corpus(tmp_path / "ran"):
        if "/" in value or value in ("", ".", "..") or "\x00" in value or len(value.encode("utf-8", "replace")) > 250:
            continue
        data = value.encode("utf-8", BYTES_ERRORS)
        (files / value).write_bytes(data)
        lines.append(sha256sums_line(hashlib.sha256(data).hexdigest(), value))
        assert sha256sums_name(lines[-1]) == value
    (files / "SUMS").write_bytes(("\n".join(lines) + "\n").encode("utf-8", BYTES_ERRORS))
    r = subprocess.run(["sha256sum", "--strict", "-c", "SUMS"], cwd=files, capture_output=True)
    assert r.returncode == 0 and r.stdout.count(b": OK") == len(lines) >= 40, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------ text

def test_display_text_is_one_plain_line() -> None:
    for value in HOSTILE:
        shown = display_text(value)
        assert shown.isprintable() and shown.encode("utf-8"), value
    assert display_text("a\nb\\") == "a\\x0ab\\\\" and display_text("caf\udce9") == "caf\\xe9"
    assert display_text("\u202e") == "\\u202e" and display_text("café") == "café"


def test_markdown_text_renders_as_the_display_text() -> None:
    import html

    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark")
    for value in HOSTILE:
        rendered = md.render(markdown_text(value)).strip()
        if not display_text(value).strip():
            continue
        assert rendered.startswith("<p>") and rendered.endswith("</p>"), (value, rendered)
        inner = rendered[3:-4]
        assert "<" not in inner, (value, rendered)  # no tag, link, emphasis or code span
        assert html.unescape(inner) == display_text(value).strip(), value
