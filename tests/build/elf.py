"""Reading what a shared object needs at load time (pyelftools) and what a manylinux policy allows (auditwheel)."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

ROOT = Path(__file__).resolve().parents[2]


def needed(path) -> list[str]:
    """DT_NEEDED entries: the libraries the loader must find."""
    with open(path, "rb") as f:
        dyn = ELFFile(f).get_section_by_name(".dynamic")
        return [tag.needed for tag in dyn.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]


def required_versions(path) -> dict[str, set[str]]:
    """Symbol versions required from each needed library, e.g. {"libc.so.6": {"GLIBC_2.14", ...}}."""
    out: dict[str, set[str]] = {}
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for verneed, auxiliaries in section.iter_versions():
                    out.setdefault(verneed.name, set()).update(aux.name for aux in auxiliaries)
    return out


def defined_versions(path) -> set[str]:
    """Symbol versions a library provides (its version definitions)."""
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, GNUVerDefSection):
                return {aux.name for _, auxiliaries in section.iter_versions() for aux in auxiliaries}
    return set()


def exported_symbols(path) -> list[str]:
    """Defined global/weak dynamic symbols (what the object exports)."""
    with open(path, "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        return [s.name for s in dynsym.iter_symbols()
                if s.name and s["st_shndx"] != "SHN_UNDEF" and s["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")]


def undefined_unversioned(path) -> list[tuple[str, bool]]:
    """(name, weak) of each undefined dynamic symbol that carries no symbol version."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        versym = elf.get_section_by_name(".gnu.version")
        dynsym = elf.get_section_by_name(".dynsym")
        out = []
        for i, s in enumerate(dynsym.iter_symbols()):
            if not s.name or s["st_shndx"] != "SHN_UNDEF":
                continue
            index = versym.get_symbol(i)["ndx"] if versym is not None else "VER_NDX_GLOBAL"
            if index in ("VER_NDX_LOCAL", "VER_NDX_GLOBAL"):
                out.append((s.name, s["st_info"]["bind"] == "STB_WEAK"))
        return out


def version_key(version: str) -> tuple[int, ...]:
    """"GLIBC_2.27" -> (2, 27); "GLIBCXX_3.4.21" -> (3, 4, 21)."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("_", 1)[1]))


def highest(versions: set[str], prefix: str) -> str | None:
    """The highest version of one family ("GLIBC", "GLIBCXX", "CXXABI", "GCC") among versions."""
    family = [v for v in versions if v.startswith(prefix + "_") and re.fullmatch(r"[\d.]+", v[len(prefix) + 1:])]
    return max(family, key=version_key) if family else None


def policy_glibc(tag: str) -> tuple[int, int]:
    """"manylinux_2_28_x86_64" (or "manylinux_2_28") -> (2, 28)."""
    major, minor = re.fullmatch(r"manylinux_(\d+)_(\d+)(_x86_64)?", tag).group(1, 2)
    return int(major), int(minor)


def declared_policy() -> str:
    """The manylinux policy the release declares: pyproject's cibuildwheel image, e.g. "manylinux_2_28"."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["cibuildwheel"]["linux"]["manylinux-x86_64-image"]


def policy(name: str) -> dict:
    """auditwheel's own definition of a policy: allowed libraries and symbol versions (x86_64)."""
    import auditwheel

    policies = json.loads((Path(auditwheel.__file__).parent / "policy" / "manylinux-policy.json").read_text())
    entry = next(p for p in policies if p["name"] == name)
    return {"libs": set(entry["lib_whitelist"]),
            "versions": {f"{family}_{v}" for family, vs in entry["symbol_versions"]["x86_64"].items() for v in vs}}
