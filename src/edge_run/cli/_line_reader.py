"""Lines typed or pasted into `edge-run chat`, read as bytes so that nothing is lost or altered on the way.

A terminal in its line mode (canonical mode) holds at most 4,095 bytes a line and drops the rest of a longer
paste without a word; GNU readline silently drops bytes that are not valid UTF-8 in a UTF-8 locale. So on a
terminal the line is read with the line mode off, one chunk of bytes at a time, and edited here: Enter ends
it; Backspace, Ctrl-U (the whole line) and Ctrl-W (a word) erase; Ctrl-D on an empty line is the end; escape
sequences (arrow keys, bracketed-paste markers) are dropped; Ctrl-C still raises KeyboardInterrupt. The
terminal stays in that mode from the first read until the reader is closed (a context manager: the chat's
end, Ctrl-C and SIGTERM included); switching back between lines would let the kernel echo, and cut at 4,095
bytes, the rest of a multi-line paste arriving meanwhile. From a pipe, lines are read as they come.

Either way a line is bytes, decoded here with ``surrogateescape``: a byte that is not text in the terminal's
encoding becomes a lone surrogate, which the caller refuses with one line. A line is read up to ``limit``
bytes; the rest of a longer line is read and discarded and the line reported as too long.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

ESC, BACKSPACE, DELETE, CTRL_D, CTRL_U, CTRL_W, TAB = 0x1B, 0x08, 0x7F, 0x04, 0x15, 0x17, 0x09
LINE_ENDS = (0x0A, 0x0D)
CHUNK = 1 << 16


@dataclass
class Line:
    text: str  # decoded with surrogateescape
    too_long: bool = False  # bytes past the limit were discarded


class LineReader:
    def __init__(self, limit: int, fd: int | None = None) -> None:
        self.limit = limit
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
        self.terminal = os.isatty(self.fd)
        self._ahead = b""  # bytes read past the end of the previous line (a multi-line paste)
        self._after_cr = False  # the previous line ended with CR: an LF right after it belongs to that end
        self._saved: list[Any] | None = None  # the terminal's settings while they are changed

    def __enter__(self) -> LineReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the terminal its settings back."""
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
            self._saved = None

    def read(self, prompt: str) -> Line | None:
        """The next line (without its end); None at the end of the input (Ctrl-D on an empty terminal line)."""
        got = self._terminal_line(prompt) if self.terminal else self._piped_line(prompt)
        if got is None:
            return None
        data, too_long = got
        return Line(data.decode(self.encoding, "surrogateescape"), too_long)

    def _piped_line(self, prompt: str) -> tuple[bytes, bool] | None:
        _echo(prompt.encode(self.encoding, "replace"))
        buf = bytearray()
        too_long = False
        while True:
            end = self._ahead.find(b"\n")
            take = self._ahead if end < 0 else self._ahead[:end]
            room = self.limit - len(buf)
            too_long |= len(take) > room
            buf += take[:max(room, 0)]
            if end >= 0:
                self._ahead = self._ahead[end + 1:]
                return bytes(buf.rstrip(b"\r")), too_long
            self._ahead = os.read(self.fd, CHUNK)
            if not self._ahead:
                return (bytes(buf), too_long) if buf or too_long else None

    def _terminal_line(self, prompt: str) -> tuple[bytes, bool] | None:
        if self._saved is None:  # before the prompt: nothing typed after it is echoed by the terminal too
            import termios

            self._saved = termios.tcgetattr(self.fd)
            raw = termios.tcgetattr(self.fd)
            raw[0] &= ~termios.ICRNL  # Enter arrives as CR, a pasted CR LF as one line end (not CR->LF, then LF)
            raw[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)  # ISIG stays: Ctrl-C is still SIGINT
            raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSANOW, raw)
        self._echo(prompt.encode(self.encoding, "replace"), prompt=True)
        try:
            return self._edit()
        except KeyboardInterrupt:
            self._ahead = b""  # Ctrl-C drops the rest of a paste too
            raise

    def _edit(self) -> tuple[bytes, bool] | None:
        buf = bytearray()
        too_long = False
        escape = 0  # 0: text; 1: after ESC; 2: in a CSI sequence (ESC [ ... final byte); 3: one byte to drop
        while True:
            try:
                data = self._ahead or os.read(self.fd, CHUNK)
            except OSError:  # EIO: the terminal hung up
                data = b""
            self._ahead = b""
            if not data:
                return (bytes(buf), too_long) if buf else None
            echo = bytearray()
            for i, b in enumerate(data):
                after_cr, self._after_cr = self._after_cr, False
                if after_cr and b == 0x0A:  # the LF of a CR LF that ended the previous line
                    continue
                if escape == 1:
                    escape = 2 if b == 0x5B else 3 if b == 0x4F else 0  # ESC [ / ESC O / Alt+key
                elif escape == 2:
                    escape = 0 if 0x40 <= b <= 0x7E else 2
                elif escape == 3:
                    escape = 0
                elif b == ESC:
                    escape = 1
                elif b in LINE_ENDS:
                    self._ahead, self._after_cr = data[i + 1:], b == 0x0D
                    self._echo(echo + b"\n")  # the terminal's output mode turns it into CR LF
                    return bytes(buf), too_long
                elif b in (BACKSPACE, DELETE):
                    echo += _erase(buf, 1)
                elif b == CTRL_W:
                    echo += _erase(buf, _word_length(buf))
                elif b == CTRL_U:
                    echo += _erase(buf, len(buf))
                elif b == CTRL_D:
                    if not buf:
                        self._ahead = data[i + 1:]
                        self._echo(echo)
                        return None
                elif b >= 0x20 or b == TAB:
                    if len(buf) < self.limit:
                        buf.append(b)
                        echo.append(b)
                    else:
                        too_long = True
            self._echo(echo)

    def _echo(self, data: bytes | bytearray, prompt: bool = False) -> None:
        """Show the prompt on stdout and typed text on the terminal: stdout when it is the terminal (in order with
        the prompt), else the terminal stdin reads from (as the terminal's own echo would: `chat | tee log` still
        shows the typing)."""
        if not data:
            return
        try:
            to_terminal = not os.isatty(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout replaced by a stream without a file
            to_terminal = True
        if prompt or not to_terminal:
            _echo(data)
            return
        try:
            os.write(self.fd, bytes(data))
        except OSError:  # stdin's terminal opened read-only
            pass


def _echo(data: bytes | bytearray) -> None:
    if not data:
        return
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)  # absent where stdout was replaced by a text stream
    if buffer is not None:
        buffer.write(data)
    else:
        sys.stdout.write(bytes(data).decode(sys.stdout.encoding or "utf-8", "replace"))
    sys.stdout.flush()


def _word_length(buf: bytearray) -> int:
    """Bytes of the last word of ``buf`` with the blanks after it."""
    n = len(buf)
    while n and buf[n - 1] in b" \t":
        n -= 1
    while n and buf[n - 1] not in b" \t":
        n -= 1
    return len(buf) - n


def _erase(buf: bytearray, n_bytes: int) -> bytes:
    """Remove the last characters of ``buf`` covering at least ``n_bytes`` bytes (whole UTF-8 sequences);
    return what erases them on the screen."""
    target = max(len(buf) - n_bytes, 0)
    columns = 0
    while len(buf) > target:
        end = len(buf)
        start = end - 1
        while start > 0 and 0x80 <= buf[start] < 0xC0 and end - start < 4:  # continuation bytes
            start -= 1
        char = bytes(buf[start:end]).decode("utf-8", "replace")
        columns += sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
                       for c in char)
        del buf[start:]
    return b"\b \b" * columns
