"""Just enough of ELF to check a cross-built shared library: machine, DT_NEEDED, glibc symbol versions.

Pure Python, so the check works with any toolchain (zig ships no readelf). Only 64-bit little-endian files
(what aarch64 and x86-64 Linux use). Layout (System V gABI):

    ELF header (64 bytes)
        0x00  e_ident: b"\\x7fELF", EI_CLASS (2 = 64-bit), EI_DATA (1 = little-endian), ...
        0x12  e_machine u16 (183 = EM_AARCH64, 62 = EM_X86_64)
        0x28  e_shoff u64        offset of the section header table
        0x3a  e_shentsize u16, e_shnum u16, e_shstrndx u16
    section header (64 bytes each)
        sh_name u32, sh_type u32, sh_flags u64, sh_addr u64, sh_offset u64, sh_size u64, sh_link u32, ...
    .dynamic (SHT_DYNAMIC = 6): (d_tag i64, d_val u64) pairs; DT_NEEDED = 1 -> offset into .dynstr (sh_link)
    .gnu.version_r (SHT_GNU_verneed = 0x6ffffffe): Verneed entries
        vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32    (16 bytes)
        each followed (at +vn_aux) by vn_cnt Vernaux entries:
        vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32 (16 bytes)
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from edge_run.core.errors import ArtifactError

MACHINES = {183: "aarch64", 62: "x86_64", 40: "arm", 243: "riscv"}
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1
DT_SONAME = 14


@dataclass(frozen=True)
class ElfInfo:
    machine: str
    needed: tuple[str, ...]  # DT_NEEDED libraries
    soname: str | None
    versions: dict[str, tuple[str, ...]]  # needed library -> symbol versions it must provide (GLIBC_2.17, ...)

    def max_glibc(self) -> tuple[int, int]:
        found = [(int(m.group(1)), int(m.group(2) or 0)) for names in self.versions.values() for v in names
                 if (m := re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", v))]
        return max(found, default=(2, 17))


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\x00", offset)
    return data[offset:end].decode("ascii", "replace")


def read_elf(path: Path) -> ElfInfo:
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        raise ArtifactError(f"{Path(path).name} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ArtifactError(f"{Path(path).name} is not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", data, 0x12)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQI", data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    soname = None
    versions: dict[str, tuple[str, ...]] = {}
    for _name, sh_type, _flags, _addr, offset, size, link in sections:
        strtab = sections[link][4] if link < len(sections) else 0
        if sh_type == SHT_DYNAMIC:
            for pos in range(offset, offset + size, 16):
                tag, val = struct.unpack_from("<qQ", data, pos)
                if tag == DT_NEEDED:
                    needed.append(_cstr(data, strtab + val))
                elif tag == DT_SONAME:
                    soname = _cstr(data, strtab + val)
                elif tag == 0:
                    break
        elif sh_type == SHT_GNU_VERNEED:
            pos = offset
            while True:
                _ver, cnt, file_, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                names, apos = [], pos + aux
                for _ in range(cnt):
                    _hash, _fl, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                    names.append(_cstr(data, strtab + name))
                    apos += anext
                versions[_cstr(data, strtab + file_)] = tuple(names)
                if not nxt:
                    break
                pos += nxt
    return ElfInfo(MACHINES.get(machine, str(machine)), tuple(needed), soname, versions)
