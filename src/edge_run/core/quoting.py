"""What a name may be, and how any value is written into a file of another language.

Every value edge-run writes into a generated file goes through the one function for that file's language:

    language                 function                where
    POSIX sh                 sh_quote, sh_assign     install.sh (one assignment block at the top)
                             sh_word                 command lines shown in a README
    systemd ExecStart        systemd_word            edge-run.service arguments
    systemd free text        systemd_text            Description=
    TOML basic string        toml_string             profiles written as TOML
    coreutils SHA256SUMS     sha256sums_line         SHA256SUMS (sha256sum -c reads it)
    plain text, one line     display_text            README.txt
    Markdown inline text     markdown_text           generated Markdown

The functions take any ``str`` (names are validated where they enter, but a file renamed by hand or a manifest
written elsewhere still reaches them), including non-UTF-8 bytes carried as surrogate escapes (os.fsdecode); a
value a language cannot hold at all (NUL in sh or systemd, non-UTF-8 in TOML) is a UsageError, never a broken file.
A file written from sh_quote's output must be encoded with ``errors="surrogateescape"`` (BYTES_ERRORS).

systemd's rules (systemd.service(5) "Command lines", systemd.unit(5) "Specifiers"): a word in double quotes,
C escapes (\\xNN gives one byte) unescaped, then ``%`` specifiers resolved (``%%`` is a percent sign), then at
exec time ``$NAME``/``${NAME}`` substituted (``$$`` is a dollar sign). ``%`` and ``$`` therefore cannot be
written as \\x25 / \\x24 (they would be unescaped first and expanded after); every other byte outside a small
safe set is written as \\xNN, so a unit stays ASCII and no quote, backslash, newline or ``@`` appears raw.
"""

from __future__ import annotations

import unicodedata

from edge_run.core.errors import EdgeRunError, UsageError

BYTES_ERRORS = "surrogateescape"  # how a file holding sh_quote's output is encoded (non-UTF-8 names stay bytes)
MAX_NAME_CHARS = 100  # artifact and profile names; file names get suffixes (".Q4_K_M.gguf.manifest.json")
MAX_NAME_BYTES = 200  # UTF-8 bytes: most file systems stop at 255 per name
NAME_PUNCTUATION = frozenset("._-+")
_SYSTEMD_RAW = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/+,:=~^ ")


def _is_surrogate(ch: str) -> bool:
    """A lone surrogate: os.fsdecode's stand-in for a byte that is not UTF-8 (or a broken string)."""
    return unicodedata.category(ch) == "Cs"


def _control(ch: str) -> bool:
    """Characters that change how text is laid out or read: C0/C1 controls, DEL, format characters (bidi
    overrides, zero-width joiners), line and paragraph separators."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _describe(ch: str) -> str:
    if ch == "\n":
        return "a newline"
    if ch == " ":
        return "a space"
    if _is_surrogate(ch):
        return "bytes that are not UTF-8"
    if _control(ch):
        return f"the control character U+{ord(ch):04X}"
    return f"{ch!r}"


def _shown(name: str) -> str:
    """``name`` for a one-line message: repr (escapes newlines and controls), cut to 60 characters."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


# ------------------------------------------------------------------------------------------------ validation

def check_name(name: object, what: str = "--name", error: type[EdgeRunError] = UsageError,
               hint: str = "e.g. --name smollm2-135m") -> str:
    """``name`` if it is a plain, portable name: letters, digits, '.', '-', '_', '+'; 1..MAX_NAME_CHARS
    characters; no leading '-' or '.'. ``error`` (one line, naming the first offending character) otherwise."""
    if not isinstance(name, str) or not name:
        raise error(f"{what} is empty", f"pass a name, {hint}")
    if "/" in name or "\\" in name or name.startswith(".") or name in (".", ".."):
        raise error(f"{what} {_shown(name)} is not a plain file name",
                    f"pass a name without '/', '..' or a leading '.', {hint}")
    rule = f"use letters, digits, '.', '-', '_' and '+' (at most {MAX_NAME_CHARS} characters), {hint}"
    bad = next((ch for ch in name if not (ch.isalnum() or ch in NAME_PUNCTUATION) or _is_surrogate(ch)), None)
    if bad is not None:
        raise error(f"{what} {_shown(name)} contains {_describe(bad)}", rule)
    if name.startswith("-"):
        raise error(f"{what} {_shown(name)} starts with '-' (it would read as an option)", rule)
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise error(f"{what} is {len(name)} characters long", rule)
    return name


def artifact_base_name(given: str | None, folder_name: str) -> str:
    """`convert --name`, or the checkpoint folder's name when none is given, checked by check_name."""
    if given is not None:
        return check_name(given, "--name")
    return check_name(folder_name, "the checkpoint folder's name", hint="or name the artifact with --name, e.g. "
                      "--name smollm2-135m")


def check_text(value: object, what: str, error: type[EdgeRunError] = UsageError, max_chars: int = 1000) -> str:
    """``value`` if it is one line of UTF-8 text without control characters (a description, a file name shown
    in a README); ``error`` otherwise."""
    if not isinstance(value, str):
        raise error(f"{what} is not text")
    bad = next((ch for ch in value if _control(ch) or _is_surrogate(ch)), None)
    if bad is not None:
        raise error(f"{what} {_shown(value)} contains {_describe(bad)}", "use one line of plain text")
    if len(value) > max_chars:
        raise error(f"{what} is {len(value)} characters long", f"use at most {max_chars}")
    return value


def _no_nul(value: str, language: str) -> None:
    if "\x00" in value:
        raise UsageError(f"{_shown(value)} contains a NUL character, which {language} cannot hold",
                         "rename it without control characters")


# ------------------------------------------------------------------------------------------------ POSIX sh

def sh_quote(value: str) -> str:
    """One POSIX sh word that is exactly ``value``: single quotes (inside them nothing is special: no $, no `,
    no \\, newlines kept), each ' written as '"'"' (no backslash, so the word reads the same in a README)."""
    _no_nul(value, "a shell script")
    return "'" + value.replace("'", "'\"'\"'") + "'"


_SH_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/+,:=@%^")


def sh_word(value: str) -> str:
    """``value`` as it is when sh reads it as one plain word, else sh_quote(value): for commands shown to a
    person (a README) that stay correct when pasted."""
    return value if value and all(ch in _SH_PLAIN for ch in value) else sh_quote(value)


def sh_assign(variable: str, value: str) -> str:
    """``VARIABLE='value'``: the only way a value enters install.sh."""
    if not variable.isidentifier() or not variable.isascii():
        raise ValueError(f"not a shell variable name: {variable!r}")
    return f"{variable}={sh_quote(value)}"


# ------------------------------------------------------------------------------------------------ systemd

def systemd_escape(value: str) -> str:
    """The inside of a double-quoted systemd word (see the module docstring)."""
    _no_nul(value, "a systemd unit")
    out = []
    for ch in value:
        if ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        elif ch in _SYSTEMD_RAW:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", BYTES_ERRORS))
    return "".join(out)


def systemd_word(value: str) -> str:
    """One ExecStart argument that systemd hands to the program as exactly ``value``."""
    return '"' + systemd_escape(value) + '"'


def systemd_text(value: str) -> str:
    """A free-text setting (Description=): systemd neither unquotes nor unescapes it but resolves specifiers and
    joins a line ending in a backslash to the next. display_text makes it one line with every backslash doubled
    or starting an escape, and '%' becomes '%%'."""
    return display_text(value).replace("%", "%%")


# ------------------------------------------------------------------------------------------------ TOML

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """A TOML basic string (TOML 1.0): '"', '\\' and every control character escaped."""
    if any(_is_surrogate(ch) for ch in value):
        raise UsageError(f"{_shown(value)} is not UTF-8 text, which TOML requires", "rename it")
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif unicodedata.category(ch) == "Cc":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ------------------------------------------------------------------------------------------------ SHA256SUMS

def sha256sums_line(digest: str, name: str) -> str:
    """One line of a SHA256SUMS file as GNU sha256sum writes it: a name holding '\\', newline or CR is escaped
    and the line starts with '\\' (coreutils >= 8.x reads it back; 9.1 on Debian 12 tested)."""
    _no_nul(name, "SHA256SUMS")
    if any(ch in name for ch in "\\\n\r"):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}"
    return f"{digest}  {name}"


def sha256sums_name(line: str) -> str:
    """The file name of one SHA256SUMS line (the inverse of sha256sums_line)."""
    if line.startswith("\\"):
        name = line[1:].split("  ", 1)[-1]
        out, i = [], 0
        while i < len(name):
            if name[i] == "\\" and i + 1 < len(name):
                out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(name[i + 1], name[i + 1]))
                i += 2
            else:
                out.append(name[i])
                i += 1
        return "".join(out)
    return line.split("  ", 1)[-1]


# ------------------------------------------------------------------------------------------------ text

def display_text(value: str) -> str:
    """One line of plain text a terminal shows as it is: a backslash is doubled, control and format
    characters (newline, ESC, bidi overrides) become \\xNN or \\uNNNN, bytes that are not UTF-8 become \\xNN."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif _is_surrogate(ch):
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", BYTES_ERRORS))
        elif _control(ch):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


_MARKDOWN_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def markdown_text(value: str) -> str:
    """Inline Markdown that renders as display_text(value): every ASCII punctuation character backslash-escaped
    (CommonMark allows that for all of them), so nothing becomes a link, emphasis, HTML or an entity."""
    return "".join("\\" + ch if ch in _MARKDOWN_PUNCTUATION else ch for ch in display_text(value))
