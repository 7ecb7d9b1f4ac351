"""Make the Markdown files of a release folder link only to what the folder holds.

The source tree keeps README.md at the top and the other documents under docs/; the release
folder has them side by side (spec/dist.sh). So in each staged .md file a relative link whose
file is in the folder under its own name is pointed there (`docs/SERVICE.md` -> `SERVICE.md`),
and one to a file the release does not carry (`bench/README.md`) becomes plain text that says
where it is. Run after staging: ``python spec/doclinks.py dist/mlxd-VERSION-OS-ARCH``; it exits 1
if a link still points at nothing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# [text](target), not an image; target without spaces (what our documents use)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:", "#")
FLATTENED = ("docs/", "spec/")  # folders spec/dist.sh copies files out of, into the top


def fix(text: str, folder: Path) -> str:
    def one(m: re.Match) -> str:
        target = m["target"]
        if target.startswith(EXTERNAL):
            return m[0]
        path, _, anchor = target.partition("#")
        if (folder / path).exists():
            return m[0]
        flat = Path(path).name
        if path.startswith(FLATTENED) and (folder / flat).exists():
            return f"[{m['text']}]({flat}{'#' + anchor if anchor else ''})"
        return f"{m['text']} (`{path}` in the source tree)"

    return LINK.sub(one, text)


def broken(text: str, folder: Path) -> list[str]:
    return [
        m["target"]
        for m in LINK.finditer(text)
        if not m["target"].startswith(EXTERNAL)
        and not (folder / m["target"].partition("#")[0]).exists()
    ]


def main(folder: Path) -> int:
    bad = []
    for doc in sorted(folder.glob("*.md")):
        text = fix(doc.read_text(encoding="utf-8"), folder)
        doc.write_text(text, encoding="utf-8")
        bad += [f"{doc.name}: {target}" for target in broken(text, folder)]
    for line in bad:
        print(f"doclinks: broken link in {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
