#!/usr/bin/env bash
# check-install-chroot.sh - the README's first command on a fresh Debian release, with its own
# Python, in a debootstrap chroot (issue 20): `bash contrib/install.sh && tunvpn demo`.
#
# Usage (as root, from a checkout): bash contrib/check-install-chroot.sh SUITE [DIR]
#   SUITE: bookworm (12) or trixie (13); DIR: the chroot (default /var/tmp/tunvpn-SUITE), made
#   with debootstrap --variant=minbase (python3 python3-venv iproute2 iputils-ping) if missing.
# The commit checked out is copied into DIR/root/tunvpn (git archive HEAD). The host's extra CA
# certificates (/usr/local/share/ca-certificates) go into the chroot too, for a network whose
# proxy intercepts TLS. Mounts are undone at the end; DIR stays (remove it with rm -rf).
set -uo pipefail
SUITE="${1:?usage: $0 SUITE [DIR]}"
R="${2:-/var/tmp/tunvpn-$SUITE}"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$R/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap || exit 1
  debootstrap --variant=minbase --include=python3,python3-venv,iproute2,iputils-ping,procps,ca-certificates \
    "$SUITE" "$R" http://deb.debian.org/debian || exit 1
fi
mountpoint -q "$R" || mount --bind "$R" "$R"  # `ip netns` remounts / (it must be a mount point)
for d in proc sys dev run; do mountpoint -q "$R/$d" || mount --rbind "/$d" "$R/$d"; done
mount --make-rslave "$R/run" 2>/dev/null
rm -rf "$R/root/tunvpn" && mkdir -p "$R/root/tunvpn"
git -C "$SRC" archive HEAD | tar -x -C "$R/root/tunvpn"
cp /etc/resolv.conf "$R/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
  chroot "$R" update-ca-certificates >/dev/null 2>&1
fi
chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  bash -c 'cd /root/tunvpn && echo "Debian $(cat /etc/debian_version), $(/usr/bin/python3 -V)" &&
    { bash contrib/install.sh --uninstall >/dev/null 2>&1; true; } &&
    bash contrib/install.sh && tunvpn --version && man -w tunvpn 2>/dev/null; tunvpn demo'
rc=$?
for d in run dev sys proc; do umount -R "$R/$d" 2>/dev/null || umount -lR "$R/$d"; done
umount "$R" 2>/dev/null || umount -l "$R"
echo "check-install-chroot: $SUITE exit $rc"
exit $rc
