#!/usr/bin/env bash
# test-compiled.sh - build tunvpn with its data path compiled by mypyc and run the unit tests
# against the compiled modules (issue 21: the same source, compiled where a compiler is).
#
# Usage: bash contrib/test-compiled.sh [PYTHON] [pytest args...]   (default python3; CI passes
# the Python contrib/test-all.sh installed everything with)
#        bash contrib/test-compiled.sh --tree DIR [PYTHON]   builds the same copy into DIR and
# stops there: a source tree whose data path runs compiled with PYTHON (PYTHONPATH=DIR), for
# `TUNVPN_COMPILED_TREE=DIR tunvpn bench --paths tunvpn,tunvpn-compiled` (side by side).
#
# 1. a virtual environment of its own in a temporary folder, with setuptools, wheel and mypy;
# 2. TUNVPN_MYPYC=1 pip wheel --no-build-isolation: the wheel a packager would build, whose
#    modules listed in tunvpn/build.py are C extensions; installed into that environment with
#    the test extra, `tunvpn --version` must say every one of them runs compiled;
# 3. a copy of this checkout gets the wheel's extension modules beside its sources (an
#    extension is imported before a .py of the same name), and tests/unit runs there, on the
#    compiled modules (a test checks that they are the ones loaded: TUNVPN_EXPECT_COMPILED).
# The checkout itself is never built in place, so no compiled module shadows edited sources.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TREE=""
if [ "${1:-}" = "--tree" ]; then
  TREE="$(realpath -m "${2:?--tree DIR}")"
  shift 2
  [ -e "$TREE" ] && { echo "test-compiled: $TREE exists" >&2; exit 2; }
fi
PY="${1:-python3}"
[ $# -gt 0 ] && shift

log() { printf '[test-compiled %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log "virtual environment in $work/venv"
"$PY" -m venv "$work/venv" || die "venv"
V="$work/venv/bin/python"
"$V" -m pip install --quiet 'setuptools>=77' wheel 'mypy>=2.4,<2.5' || die "pip install setuptools wheel mypy"
# mypyc reads the types of what the compiled modules import (cryptography): the dependencies first
"$V" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
  >"$work/requirements.txt" || die "read pyproject.toml"
"$V" -m pip install --quiet -r "$work/requirements.txt" || die "pip install the dependencies"

log "copy of the checkout (tracked files and the working tree's changes)"
if [ -n "$TREE" ]; then mkdir -p "$TREE" && ln -s "$TREE" "$work/src"; else mkdir "$work/src"; fi
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src" 2>/dev/null ||
  tar --exclude=.git --exclude=.venv -cf - . | tar -xf - -C "$work/src"

log "TUNVPN_MYPYC=1 pip wheel (mypyc compiles the data path)"
(cd "$work/src" && TUNVPN_MYPYC=1 "$V" -m pip wheel --quiet --no-build-isolation --no-deps -w "$work/dist" .) ||
  die "the mypyc build"
wheel="$(ls "$work"/dist/tunvpn-*.whl)"
log "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
if [ -n "$TREE" ]; then
  (cd "$work/src" && "$V" -m zipfile -e "$wheel" "$work/wheel" && cd "$work/wheel" &&
    find . -name '*.so' -exec cp --parents -t "$TREE" {} +) || die "unpack the wheel"
  (cd "$TREE" && "$PY" -c 'from tunvpn.build import build_kind; print(build_kind())' >&2)
  log "a tree with the compiled data path: $TREE (PYTHONPATH=$TREE $PY -m tunvpn ...)"
  exit 0
fi
"$V" -m pip install --quiet "$wheel[test]" || die "pip install the wheel"
"$V" -m pip install --quiet "$work/src/tests/example-plugin" "$work/src"/plugins/*/ || die "pip install the plugins"
version="$(cd "$work" && "$V" -m tunvpn --version)"
log "$version"
case "$version" in *"compiled (mypyc"*) ;; *) die "the installed wheel does not run compiled: $version" ;; esac

log "the wheel's extension modules beside the copy's sources"
(cd "$work/src" && "$V" -m zipfile -e "$wheel" "$work/wheel" && cd "$work/wheel" &&
  find . -name '*.so' -exec cp --parents -t "$work/src" {} +) || die "unpack the wheel"

log "pytest tests/unit on the compiled modules"
cd "$work/src"
TUNVPN_EXPECT_COMPILED=1 "$V" -m pytest -q -p no:cacheprovider tests/unit "$@" || die "unit tests, compiled"
log "unit tests passed on the compiled data path"
