#!/usr/bin/env bash
# mypy --strict on optcompile.lowering (house style: "mypy --strict on lowering/").
#
# lowering/ is installed as optcompile.lowering through a setuptools package-dir mapping, which
# mypy cannot follow in an editable install. So this builds a throwaway shadow tree of symlinks
#   <tmp>/optcompile/<each entry of optcompile/>, <tmp>/optcompile/lowering -> lowering/,
#   <tmp>/optcompile/csrc -> csrc/
# and checks the package there. Only optcompile.lowering is reported on; the rest of
# optcompile is followed silently (pyproject.toml [tool.mypy]). The exit status is mypy's.
#
# Usage: tools/typecheck.sh [extra mypy arguments]. Types are checked against $PYTHON if set,
# else the active virtualenv's python, else <repo>/.venv's, else python3; mypy is taken from
# that interpreter if it has it, else from PATH (with --python-executable).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
    python="$VIRTUAL_ENV/bin/python"
elif [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi
python="$(command -v "$python")"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/optcompile-typecheck.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

mkdir "$tmp/optcompile"
for entry in "$repo"/optcompile/*; do
    name="$(basename "$entry")"
    case "$name" in __pycache__ | lowering | csrc) continue ;; esac
    ln -s "$entry" "$tmp/optcompile/$name"
done
ln -s "$repo/lowering" "$tmp/optcompile/lowering"
ln -s "$repo/csrc" "$tmp/optcompile/csrc"

if "$python" -c "import mypy" 2>/dev/null; then
    mypy=("$python" -m mypy)
else
    mypy=(mypy --python-executable "$python")
fi

cd "$tmp"
status=0
"${mypy[@]}" --config-file "$repo/pyproject.toml" --cache-dir "$repo/.mypy_cache" \
    --strict -p optcompile.lowering "$@" || status=$?
exit "$status"
