"""make formula: spec/homebrew/mlxd.rb with a release's version, url and sha256 filled in.

    python spec/make_formula.py [--sums dist/SHA256SUMS] [--repo OWNER/NAME] [--out dist/mlxd.rb]

The macOS arm64 tarball is built on macOS, so on Linux dist/SHA256SUMS does not list it: pass the
release's merged SHA256SUMS (the release workflow does). --repo defaults to $GITHUB_REPOSITORY,
then to the repository already named in the template. --out - writes to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "spec" / "homebrew" / "mlxd.rb"
PLATFORM = "macos-arm64"
TARBALL = re.compile(rf"^mlxd-(?P<version>\d+\.\d+\.\d+[^-]*)-{PLATFORM}\.tar\.gz$")
REPO_IN_HOMEPAGE = re.compile(r'^  homepage "https://github\.com/(?P<repo>[^/"]+/[^/"]+)"$', re.M)


def find_tarball(sums: Path) -> tuple[str, str, str]:
    """(version, file name, sha256) of the one macOS arm64 tarball that ``sums`` lists."""
    found = []
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        match = TARBALL.match(name.strip().lstrip("*"))
        if match:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise SystemExit(f"make_formula: {sums}: malformed sha256 for {name}: {digest!r}")
            found.append((match["version"], match.group(0), digest))
    if len(found) != 1:
        listed = ", ".join(n for _, n, _ in found) or "none"
        raise SystemExit(
            f"make_formula: {sums} must list exactly one mlxd-VERSION-{PLATFORM}.tar.gz "
            f"(found: {listed}); it is built on macOS: pass the release's SHA256SUMS "
            f"(make formula SUMS=path)"
        )
    return found[0]


def fill(template: str, repo: str, version: str, name: str, digest: str) -> str:
    url = f"https://github.com/{repo}/releases/download/v{version}/{name}"
    out = template
    for field, value in (
        ("homepage", f"https://github.com/{repo}"),
        ("url", url),
        ("sha256", digest),
    ):
        out, count = re.subn(rf'^  {field} "[^"]*"$', f'  {field} "{value}"', out, flags=re.M)
        if count != 1:
            raise SystemExit(f"make_formula: {TEMPLATE} has {count} '{field}' lines, expected 1")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sums", type=Path, default=ROOT / "dist" / "SHA256SUMS")
    ap.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY") or None)
    ap.add_argument("--out", default=str(ROOT / "dist" / "mlxd.rb"))
    args = ap.parse_args()
    if not args.sums.is_file():
        raise SystemExit(
            f"make_formula: no {args.sums}: run make dist (on macOS arm64), or pass "
            "the release's SHA256SUMS (make formula SUMS=path)"
        )
    template = TEMPLATE.read_text()
    repo = args.repo or REPO_IN_HOMEPAGE.search(template)["repo"]
    version, name, digest = find_tarball(args.sums)
    formula = fill(template, repo, version, name, digest)
    if args.out == "-":
        sys.stdout.write(formula)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(formula)
        print(
            f"make_formula: wrote {args.out}: mlxd {version}, {name}, sha256 {digest[:12]}...",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
