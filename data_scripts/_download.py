"""Shared helpers of the download scripts (standard library only): streamed download + MD5 check."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

USER_AGENT = "bayes_dip-data-scripts (https://github.com/; research use)"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically; if ``md5`` is given the file must match it.

    A file already at ``dest`` with the right MD5 is kept (no download).
    """
    dest = Path(dest)
    if dest.is_file() and md5 is not None and md5sum(dest) == md5:
        print(f"ok       {dest} (md5 matches, kept)")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        if md5 is not None:
            got = md5sum(Path(tmp))
            if got != md5:
                raise RuntimeError(f"MD5 mismatch for {url}: got {got}, expected {md5}")
        os.replace(tmp, dest)
        print(f"fetched  {dest}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def verify(files: dict[str, str], folder: Path) -> bool:
    """Check the MD5 of each ``name -> md5`` in ``folder``; print one line per file."""
    ok = True
    for name, md5 in files.items():
        path = folder / name
        if not path.is_file():
            print(f"missing  {path}", file=sys.stderr)
            ok = False
        elif md5sum(path) != md5:
            print(f"BAD MD5  {path}", file=sys.stderr)
            ok = False
        else:
            print(f"ok       {path}")
    return ok
