#!/usr/bin/env bash
# test-all.sh - install everything the tunvpn test suite needs and run all of it.
#
# Usage (Debian 12 / Ubuntu, as root, from anywhere):   bash contrib/test-all.sh [pytest args...]
#
# 1. apt-get: strongSwan (charon + swanctl + the plugins Debian splits off), vpnc, tshark, iperf3,
#    iproute2, OpenVPN and wireguard-go + wg (peers of `tunvpn bench`), FreeRADIUS (the RADIUS
#    plugin's tests start their own instance on loopback) ...; /usr/sbin/policy-rc.d
#    answers 101 meanwhile so no package starts a service.
# 2. /dev/net/tun exists (modprobe tun, else mknod c 10 200).
# 3. pip install -e '.[test,docs]'  (tunvpn + pytest, hypothesis, ruff, mypy; mkdocs), then each plugins/*/
# 4. ruff check ., then mypy (type check of tunvpn/ and plugins/*/, configured in pyproject.toml),
#    then mkdocs build --strict (the documentation site: a broken link fails)
# 5. pytest: ALL tests, including the netns and interop ones. TUNVPN_REQUIRE_ALL=1 turns their
#    "missing root/binary" skips into failures, since this script has just installed everything.
# 6. contrib/test-compiled.sh: a mypyc build of the data path (TUNVPN_MYPYC=1 wheel) and the unit
#    tests run on it (issue 21); skipped when pytest arguments were given.
# This is the command CI runs (.ci/run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test-all %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and creates network namespaces"

APT_PACKAGES=(
  strongswan-charon strongswan-swanctl
  libstrongswan-standard-plugins libstrongswan-extra-plugins
  libcharon-extra-plugins libcharon-extauth-plugins
  vpnc tshark iperf3 iproute2 iputils-ping util-linux procps openssl
  openvpn wireguard-go wireguard-tools
  freeradius freeradius-utils xl2tpd
  postgresql freeradius-postgresql
  ike-scan nftables conntrack ethtool
)

# ------------------------------------------------------------------ Debian packages
POLICY=/usr/sbin/policy-rc.d
POLICY_SAVED=""
POLICY_MADE=0
restore_policy() {
  if [ "$POLICY_MADE" = 1 ]; then
    rm -f "$POLICY"
    [ -n "$POLICY_SAVED" ] && mv -f "$POLICY_SAVED" "$POLICY"
  fi
  POLICY_MADE=0
}
trap restore_policy EXIT

policy_rc=0
if [ -x "$POLICY" ]; then "$POLICY" dummy start >/dev/null 2>&1 || policy_rc=$?; fi
if [ "$policy_rc" != 101 ]; then
  # Missing, or says something else than "101: action forbidden": put ours in place for the install.
  if [ -e "$POLICY" ]; then POLICY_SAVED="$POLICY.tunvpn-saved.$$"; mv -f "$POLICY" "$POLICY_SAVED"; fi
  printf '#!/bin/sh\n# temporary, from tunvpn contrib/test-all.sh: start no services during apt-get\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  POLICY_MADE=1
fi

export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
  if apt-get update -q; then break; fi
  [ "$attempt" = 3 ] && die "apt-get update failed 3 times"
  log "apt-get update failed; retrying in 10 s"; sleep 10
done
log "apt-get install ${APT_PACKAGES[*]}"
apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" || die "apt-get install"
restore_policy

for plugin in kernel-libipsec kernel-netlink openssl gcm xauth-generic unity vici socket-default curve25519; do
  [ -e "/usr/lib/ipsec/plugins/libstrongswan-$plugin.so" ] || die "strongSwan plugin $plugin missing after install"
done

# ------------------------------------------------------------------ TUN device
if [ ! -c /dev/net/tun ]; then
  modprobe tun 2>/dev/null || true
  if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net
    mknod /dev/net/tun c 10 200 || die "cannot create /dev/net/tun"
    chmod 0666 /dev/net/tun
    log "created /dev/net/tun (c 10 200)"
  fi
fi

# ------------------------------------------------------------------ Python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The distribution's own Python (Debian/Ubuntu) refuses `pip install` into the system (PEP 668):
# then everything goes into .venv/ in this checkout, made with that Python, and runs from there.
PY=python3
if python3 -c 'import sys, sysconfig, pathlib; sys.exit(not (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists())'; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get install -y -q --no-install-recommends python3-venv || die "apt-get install python3-venv"
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv || die "python3 -m venv .venv"
  PY="$(pwd)/.venv/bin/python"
  export PATH="$(pwd)/.venv/bin:$PATH"
  log "externally managed python3: using the virtual environment .venv"
fi
log "pip install -e .[test,docs]"
"$PY" -m pip install --quiet -e '.[test,docs]' || die "pip install"
# the plugin distributions under plugins/ (each its own package with a tunvpn entry point)
# docs/plugins.md's example plugin, which tests/unit/plugins/test_docs_example_plugin.py loads by its entry point
log "pip install -e tests/example-plugin"
"$PY" -m pip install --quiet -e tests/example-plugin || die "pip install tests/example-plugin"
for plugin in plugins/*/pyproject.toml; do
  [ -e "$plugin" ] || continue
  log "pip install -e $(dirname "$plugin")"
  "$PY" -m pip install --quiet -e "$(dirname "$plugin")" || die "pip install $(dirname "$plugin")"
done

log "ruff check ."
"$PY" -m ruff check . || die "ruff check"
# the files and per-module strictness are [tool.mypy] in pyproject.toml (tunvpn/ and the plugins' packages)
log "mypy"
"$PY" -m mypy || die "mypy"
# the documentation site: a broken link (or a page left out of mkdocs.yml's nav) fails
log "mkdocs build --strict"
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$site" || die "mkdocs build --strict"
rm -rf "$site"

# ------------------------------------------------------------------ tests
log "pytest (all tests, netns + interop included)"
export TUNVPN_REQUIRE_ALL=1
rc=0
timeout --kill-after=60 4200 "$PY" -m pytest -q --durations=15 "$@" || rc=$?
case $rc in
  0) log "all tests passed" ;;
  5) die "pytest collected no tests (exit 5): is testpaths right, are the tests there?" ;;
  124|137) die "pytest exceeded 70 minutes and was stopped" ;;
  *) die "pytest exit code $rc" ;;
esac

# ------------------------------------------------------------------ the compiled data path
# issue 21: the unit tests again, on a mypyc build of the data path (a wheel built with
# TUNVPN_MYPYC=1 in a virtual environment of its own; the checkout is not touched)
if [ "$#" -eq 0 ]; then
  log "contrib/test-compiled.sh (mypyc build, unit tests on it)"
  timeout --kill-after=60 1200 bash contrib/test-compiled.sh "$PY" || die "the unit tests on the compiled data path"
fi
