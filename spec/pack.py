"""Pack a release folder into NAME.tar.gz and (re)write SHA256SUMS beside it. Used by spec/dist.sh.

    python spec/pack.py dist/mlxd-0.1.0-linux-x86_64

Python's tarfile rather than tar(1): GNU tar and macOS's bsdtar spell "owner root, numeric ids"
differently, and the archive should not carry the build user's name. Symlinks stay symlinks (the
one-folder bundle has a few, lib/libmlx.so -> mlx/lib/libmlx.so and the like).
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import tarfile
from pathlib import Path

SUMS = "SHA256SUMS"


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(folder: Path) -> Path:
    archive = folder.parent / f"{folder.name}.tar.gz"
    tmp = archive.with_name(archive.name + ".part")
    # mtime=0 in the gzip header: the same tree gives the same bytes, whenever it is packed.
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in [folder, *sorted(folder.rglob("*"))]:
            tar.add(
                path,
                arcname=str(path.relative_to(folder.parent)),
                recursive=False,
                filter=_anonymous,
            )
    tmp.replace(archive)
    return archive


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: Path) -> Path:
    """One line per tarball in ``folder``, in `sha256sum -c` format (hash, two spaces, name)."""
    sums = folder / SUMS
    lines = [f"{sha256(p)}  {p.name}\n" for p in sorted(folder.glob("mlxd-*.tar.gz"))]
    sums.write_text("".join(lines))
    return sums


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: pack.py RELEASE_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    archive = pack(folder)
    sums = write_sums(folder.parent)
    print(f"wrote {archive} ({archive.stat().st_size / 2**20:.1f} MiB) and {sums}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
