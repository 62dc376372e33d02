"""Abbreviated object names as git prints them in a patch's `index` line (`git show`, core.abbrev unset): at least
7 hex digits, more in a repository with many packed objects (git's own estimate), and always one more than any
other object's name shares with it, so the prefix names one object in this repository as git would print it.

Read from the object directory itself: the loose objects of the name's fan-out folder and each pack's index
(version 2: a fan-out table, then the sorted names; the neighbours of where a name sorts are the closest).
A repository with alternates is left to git (`Fallback`): its objects elsewhere count too.
"""

from __future__ import annotations

import bisect
import math
import mmap
import os
import struct
from pathlib import Path

from nightlab.gitobjects import Fallback

MIN = 7  # git's FALLBACK_DEFAULT_ABBREV
IDX_MAGIC = b"\377tOc"
NAMES = 8 + 256 * 4  # where a version 2 index's sorted names begin


class _Names:
    """A pack index's sorted object names, as a sequence bisect can search without reading them all."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.count = struct.unpack_from(">I", data, NAMES - 4)[0]  # the fan-out's last entry: all objects

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:
        return self.data[NAMES + 20 * i:NAMES + 20 * i + 20]


def _shared(a: str, b: str) -> int:
    """How many leading hex digits two object names share."""
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return i


class Abbrev:
    """The abbreviations of one repository's objects, read as of now (objects added later may lengthen them)."""

    def __init__(self, objects_dir: Path) -> None:
        self.dir = objects_dir
        if (objects_dir / "info" / "alternates").exists():
            raise Fallback("the repository borrows objects from alternates")
        self.packs: list[_Names] = []
        pack_dir = objects_dir / "pack"
        names = sorted(os.listdir(pack_dir)) if pack_dir.is_dir() else []
        for name in names:
            if name.endswith(".idx"):
                self.packs.append(self._index(pack_dir / name))
        count = sum(len(p) for p in self.packs)
        # git: about 2^b packed objects (b: the count's bits) expect a collision at 2^(b/2), 4 bits a hex digit
        self.min = max(MIN, math.ceil(count.bit_length() / 2))

    @staticmethod
    def _index(path: Path) -> _Names:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size < NAMES:
                raise Fallback(f"{path.name} is not a pack index git would read")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if data[:8] != IDX_MAGIC + b"\0\0\0\2":
            raise Fallback(f"{path.name} is not a version 2 pack index")
        return _Names(data)

    def __call__(self, sha: str) -> str:
        length = self.min
        raw = bytes.fromhex(sha)
        for names in self.packs:
            at = bisect.bisect_left(names, raw)
            after = at + 1 if at < len(names) and names[at] == raw else at
            for i in (at - 1, after):
                if 0 <= i < len(names):
                    length = max(length, _shared(sha, names[i].hex()) + 1)
        try:
            loose = os.listdir(self.dir / sha[:2])
        except (FileNotFoundError, NotADirectoryError):
            loose = []
        for rest in loose:
            if len(rest) == 38 and rest != sha[2:]:
                length = max(length, _shared(sha, sha[:2] + rest) + 1)
        return sha[:min(length, 40)]
