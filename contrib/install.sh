#!/usr/bin/env bash
# install.sh - install tunvpn into its own virtual environment and put `tunvpn` on the PATH.
#
# Works with the distribution's own Python (Debian 12/13, Ubuntu 24.04), whose pip refuses to
# install into the system (PEP 668 "externally-managed-environment"): nothing is installed into
# /usr/lib/python3*, no --break-system-packages.
#
# Usage (as root, from a checkout):
#   bash contrib/install.sh                 # venv in /opt/tunvpn, link /usr/local/bin/tunvpn
#   bash contrib/install.sh --with-plugins  # also plugins/* (radius, otp, l2tp)
#   bash contrib/install.sh --uninstall     # remove exactly what an install made
# Options: --prefix DIR (venv, default /opt/tunvpn), --bindir DIR (default /usr/local/bin),
#          --sharedir DIR (man page and completions, default /usr/local/share),
#          --python PYTHON (default: the distribution's /usr/bin/python3, else python3 on PATH).
#
# What it changes on the machine:
#   * DIR (the venv with tunvpn and its PyPI dependencies: cryptography, pluggy, python-pytun,
#     pyroute2) and a manifest DIR/.tunvpn-install;
#   * the symbolic link BINDIR/tunvpn -> DIR/bin/tunvpn (an existing file that is not such a link
#     is left alone and the script stops);
#   * SHAREDIR/man/man1/tunvpn.1 (`man tunvpn`), SHAREDIR/bash-completion/completions/tunvpn and
#     SHAREDIR/zsh/site-functions/_tunvpn, made from the installed command (tunvpn manpage,
#     tunvpn completion), listed in the manifest and removed by --uninstall;
#   * on Debian/Ubuntu, only if the venv module is missing: `apt-get install python3-venv`
#     (the package stays installed after --uninstall; remove it with apt-get if you wish).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/tunvpn
BINDIR=/usr/local/bin
SHAREDIR=/usr/local/share
PYTHON=""
PLUGINS=0
UNINSTALL=0

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --bindir) BINDIR="${2:?--bindir needs a directory}"; shift 2 ;;
    --sharedir) SHAREDIR="${2:?--sharedir needs a directory}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --with-plugins) PLUGINS=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
case "$BINDIR" in /*) ;; *) BINDIR="$(pwd)/$BINDIR" ;; esac
case "$SHAREDIR" in /*) ;; *) SHAREDIR="$(pwd)/$SHAREDIR" ;; esac
MANIFEST="$PREFIX/.tunvpn-install"
LINK="$BINDIR/tunvpn"

if [ "$UNINSTALL" = 1 ]; then
  [ -f "$MANIFEST" ] || die "$PREFIX was not made by contrib/install.sh (no $MANIFEST); nothing removed"
  if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/tunvpn" ]; then
    rm -f "$LINK"; log "removed $LINK"
  fi
  while IFS= read -r line; do  # the man page and completions this script made
    case "$line" in file\ /*) f="${line#file }"; [ -f "$f" ] && rm -f "$f" && log "removed $f" ;; esac
  done <"$MANIFEST"
  rm -rf "$PREFIX"; log "removed $PREFIX"
  exit 0
fi

if [ -z "$PYTHON" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON="$(command -v python3 || true)"; fi
fi
[ -n "$PYTHON" ] && "$PYTHON" -c 'pass' 2>/dev/null || die "no Python 3 found (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); tunvpn needs Python 3.11 or newer"

# Debian splits the venv module (and ensurepip) into python3-venv / python3.X-venv.
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  command -v apt-get >/dev/null || die "$PYTHON has no working venv module; install it (python3-venv)"
  [ "$(id -u)" = 0 ] || die "$PYTHON has no venv module: run as root, or apt-get install python3-venv"
  ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  log "the venv module is missing: apt-get install python3-venv python$ver-venv"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv "python$ver-venv" \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           python3-venv "python$ver-venv"; } || die "apt-get install python3-venv failed"
fi

if [ -e "$LINK" ] && ! { [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/tunvpn" ]; }; then
  die "$LINK exists and is not our link to $PREFIX/bin/tunvpn; remove it or choose --bindir"
fi

if [ ! -x "$PREFIX/bin/python" ]; then
  log "creating the virtual environment $PREFIX ($("$PYTHON" -V 2>&1))"
  "$PYTHON" -m venv "$PREFIX" || die "python -m venv $PREFIX failed"
fi
printf 'made by tunvpn contrib/install.sh from %s\nlink %s\n' "$SRC" "$LINK" >"$MANIFEST"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
targets=("$SRC[manpages]")  # the extra: argparse-manpage and shtab, for the man page and completions
if [ "$PLUGINS" = 1 ]; then
  for p in "$SRC"/plugins/*/pyproject.toml; do [ -e "$p" ] && targets+=("$(dirname "$p")"); done
fi
log "pip install ${targets[*]} into $PREFIX"
"$PREFIX/bin/python" -m pip install --quiet --upgrade "${targets[@]}" || die "pip install failed"

mkdir -p "$BINDIR"
ln -sfn "$PREFIX/bin/tunvpn" "$LINK"

# the manual page and the completions, from the installed command's own definitions
install_generated() {  # FILE COMMAND...
  local file="$1"; shift
  mkdir -p "$(dirname "$file")"
  if "$PREFIX/bin/tunvpn" "$@" >"$file.tmp"; then
    mv "$file.tmp" "$file"; printf 'file %s\n' "$file" >>"$MANIFEST"; log "installed $file"
  else
    rm -f "$file.tmp"; log "warning: could not make $file"
  fi
}
install_generated "$SHAREDIR/man/man1/tunvpn.1" manpage
install_generated "$SHAREDIR/bash-completion/completions/tunvpn" completion bash
install_generated "$SHAREDIR/zsh/site-functions/_tunvpn" completion zsh
log "installed: $LINK -> $PREFIX/bin/tunvpn ($("$LINK" --help >/dev/null 2>&1 && echo ok || echo 'but it does not start'))"
case ":$PATH:" in *":$BINDIR:"*) ;; *) log "note: $BINDIR is not on your PATH" ;; esac
log "remove with: bash $SRC/contrib/install.sh --prefix $PREFIX --bindir $BINDIR --uninstall"
