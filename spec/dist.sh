#!/usr/bin/env bash
# make dist: freeze mlxd with PyInstaller (spec/mlxd.spec) and pack the release.
#
#   dist/mlxd-VERSION-OS-ARCH/           the release as a user unpacks it:
#       mlxd                             the executable (PyInstaller's one-folder bootloader)
#       lib/                             everything it loads: Python, mlx, mlx_lm, tokenizers, ...
#       README.md LICENSE INSTALL.md mlxd.example.json [mlxd.service com.mlxd.server.plist SERVICE.md]
#   dist/mlxd -> mlxd-VERSION-OS-ARCH/mlxd   the entry point (a symlink works: the bootloader
#                                            finds lib/ from its real path)
#   dist/mlxd-VERSION-OS-ARCH.tar.gz, dist/SHA256SUMS
#
# One folder, not one file: a one-file build unpacks ~140 MB into a temporary directory on every
# start, --version and --stop included (docs/INSTALL.md has the numbers; spec/bench_dist.py
# measures them).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PYINSTALLER=${PYINSTALLER:-.venv/bin/pyinstaller}
WORK=build/pyinstaller

VERSION=$("$PY" -c 'import mlxd; print(mlxd.__version__)')
case "$(uname -s)" in
    Darwin) OS=macos ;;
    Linux) OS=linux ;;
    *) echo "dist.sh: unsupported OS $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
    arm64 | aarch64) ARCH=arm64 ;;   # one name for Apple silicon and Linux ARM
    x86_64 | amd64) ARCH=x86_64 ;;
    *) echo "dist.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
NAME=mlxd-$VERSION-$OS-$ARCH
STAGE=dist/$NAME

start=$(date +%s)
rm -rf "$WORK/dist" dist/mlxd dist/mlxd-* dist/SHA256SUMS
MLXD_BUNDLE=onedir "$PYINSTALLER" --noconfirm --log-level WARN \
    --distpath "$WORK/dist" --workpath "$WORK/work" spec/mlxd.spec
built=$(date +%s)

mkdir -p "$STAGE"
cp -R "$WORK/dist/mlxd/." "$STAGE/"
cp README.md LICENSE spec/mlxd.example.json "$STAGE/"
# Files that other parts of the project own; shipped when present.
for extra in docs/INSTALL.md docs/SERVICE.md spec/mlxd.service spec/com.mlxd.server.plist; do
    if [ -f "$extra" ]; then cp "$extra" "$STAGE/"; fi
done
# The documents sit side by side here (docs/X.md in the source tree): point their links at what
# the folder holds; fails on a link to nothing.
"$PY" spec/doclinks.py "$STAGE"
ln -s "$NAME/mlxd" dist/mlxd

# The bundle must answer before it is packed: a broken freeze fails here, not at the user's.
got=$(dist/mlxd --version)
if [ "$got" != "mlxd $VERSION" ]; then
    echo "dist.sh: dist/mlxd --version said '$got', expected 'mlxd $VERSION'" >&2
    exit 1
fi

"$PY" spec/pack.py "$STAGE"
end=$(date +%s)
echo "dist.sh: $NAME: freeze $((built - start)) s, pack $((end - built)) s;" \
     "folder $(du -sh "$STAGE" | cut -f1), tarball $(du -h "dist/$NAME.tar.gz" | cut -f1)"
