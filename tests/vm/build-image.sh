#!/usr/bin/env bash
# Build a small bootable Phoenix test image from Debian packages, with
# phoenix-supervisor as init:
#   OUT/vmlinuz      Debian's kernel
#   OUT/initrd.img   busybox and the virtio and ext4 modules; mounts the root
#                    disk and hands over to init= (phoenix-supervisor)
#   OUT/root.ext4    Debian bookworm (minbase) with PostgreSQL 15, Prometheus,
#                    the Pushgateway, iproute2 and our binaries
#
# Usage: tests/vm/build-image.sh OUT_DIR BIN_DIR ADMIN_PASSWORD
# Needs root, debootstrap, busybox-static, e2fsprogs, kmod, cpio (scripts/setup.sh).
set -euo pipefail

out=$(realpath -m "$1")
bins=$(realpath "$2")
admin_password=$3
mirror=${PHOENIX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
here=$(dirname "$(realpath "$0")")

mkdir -p "$out"
work="$out/work"
rm -rf "$work"
mkdir -p "$work"
log() { echo "build-image: $*" >&2; }

log "root file system (debootstrap $suite from $mirror)"
root="$work/root"
debootstrap --variant=minbase \
  --include=postgresql-15,pgbackrest,prometheus,prometheus-pushgateway,iproute2,ca-certificates \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

log "kernel and modules"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kpkg" ] || { log "cannot find the kernel package (run apt-get update)"; exit 1; }
(cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1)
dpkg-deb -x "$work/$kpkg"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

log "initramfs ($kver)"
initrd="$work/initrd"
mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,lib/modules/"$kver"}
cp /bin/busybox "$initrd/bin/busybox"
kmods="$work/kernel/lib/modules/$kver"
mods=(virtio virtio_ring virtio_pci virtio_pci_legacy_dev virtio_pci_modern_dev virtio_blk
      virtio_net net_failover failover ext4 jbd2 mbcache crc16 crc32c_generic libcrc32c)
for m in "${mods[@]}"; do
  f=$(find "$kmods/kernel" -name "$m.ko*" | head -n 1)
  [ -n "$f" ] || { log "module $m not found in $kpkg"; exit 1; }
  mkdir -p "$initrd/lib/modules/$kver/$(dirname "${f#"$kmods/"}")"
  cp "$f" "$initrd/lib/modules/$kver/${f#"$kmods/"}"
done
cp "$kmods"/modules.order "$kmods"/modules.builtin* "$initrd/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$initrd" "$kver"
install -m 0755 "$here/initramfs-init" "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img"

log "Phoenix binaries and config"
install -m 0755 "$bins/phoenix-supervisor" "$bins/phoenixctl" "$bins/phoenix-api" "$root/usr/local/bin/"
chroot "$root" /usr/sbin/useradd --system --home-dir /var/lib/phoenix --no-create-home --shell /usr/sbin/nologin phoenix
install -d -m 0755 "$root/etc/phoenix"
install -m 0600 "$here/phoenix.toml" "$root/etc/phoenix/phoenix.toml"
# The initial admin password is generated on first boot; the test seeds its
# own so the host can log in. Same owner and mode as a generated one.
install -d -m 0711 "$root/var/lib/phoenix/secrets"
printf '%s\n' "$admin_password" >"$root/var/lib/phoenix/secrets/initial-admin-password"
chroot "$root" chown phoenix: /var/lib/phoenix/secrets/initial-admin-password
chmod 0600 "$root/var/lib/phoenix/secrets/initial-admin-password"
# The distribution's own cluster and service files are not used: the supervisor runs its own.
rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"

log "ext4 image"
rm -f "$out/root.ext4"
mkfs.ext4 -q -F -L phoenix-root -d "$root" "$out/root.ext4" 3G
rm -rf "$work"
log "done: $out"
