#!/usr/bin/env bash
# make lint-release: check what CI here cannot run: the release workflow (actionlint) and the
# Homebrew formula (ruby -c, the template and a copy filled in by make_formula.py); plus the
# example config (through mlxd's own loader, which refuses unknown keys) and the spec/ scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VENV_BIN=$(dirname "$PY")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlxd-lint.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "lint-release: actionlint .github/workflows/release.yml"
"$VENV_BIN/actionlint" -no-color .github/workflows/release.yml

echo "lint-release: ruby -c spec/homebrew/mlxd.rb"
if ! command -v ruby > /dev/null; then
    # CI runs on a fresh Debian machine as root; elsewhere, ask for sudo rather than guess.
    if command -v apt-get > /dev/null && [ "$(id -u)" -eq 0 ]; then
        echo "lint-release: ruby is missing; installing it with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby > /dev/null
    elif command -v apt-get > /dev/null && sudo -n true 2> /dev/null; then
        echo "lint-release: ruby is missing; installing it with sudo apt-get"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby > /dev/null
    fi
fi
if command -v ruby > /dev/null; then
    ruby -c spec/homebrew/mlxd.rb
    printf '%064d  mlxd-9.9.9-macos-arm64.tar.gz\n' 0 > "$WORK/SHA256SUMS"
    "$PY" spec/make_formula.py --sums "$WORK/SHA256SUMS" --repo example/mlxd --out "$WORK/mlxd.rb"
    grep -q 'url "https://github.com/example/mlxd/releases/download/v9.9.9/mlxd-9.9.9-macos-arm64.tar.gz"' \
        "$WORK/mlxd.rb"
    ruby -c "$WORK/mlxd.rb"
else
    echo "lint-release: *** SKIPPED the formula's Ruby syntax check: no ruby, and no apt-get (as root or" \
         "through sudo) to install it ***" >&2
fi

echo "lint-release: spec/mlxd.example.json through mlxd --print-config"
"$VENV_BIN/mlxd" --config spec/mlxd.example.json --print-config > /dev/null

echo "lint-release: spec/ scripts"
for script in spec/*.sh; do bash -n "$script"; done
if command -v shellcheck > /dev/null; then shellcheck spec/*.sh; fi
"$PY" -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' spec/*.py spec/mlxd.spec
echo "lint-release: all passed"
