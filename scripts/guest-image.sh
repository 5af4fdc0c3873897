#!/usr/bin/env bash
# Builds the guest image for brownout's QEMU backend:
#   OUT/vmlinux          the uncompressed kernel from Debian's linux-image-*-amd64 package
#   OUT/initramfs.cpio   busybox, the kernel modules the guest needs, /init, and a
#                        statically linked brownout-mcp-server
#   OUT/image.txt        what went in (inputs and their sha256)
#
# Cached by content: the image is rebuilt only when an input (kernel package, busybox,
# server binary, this script) changes. Needs: apt-get, dpkg, xz, busybox-static, cargo.
#
# Usage: scripts/guest-image.sh [OUT]   (default: target/guest)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${CARGO_TARGET_DIR:-$root/target}/guest}"
mkdir -p "$out/cache"
out="$(cd "$out" && pwd)"
say() { echo "guest-image: $*" >&2; }

# The server, static (glibc with crt-static; --target keeps build scripts and proc macros
# dynamic).
triple=x86_64-unknown-linux-gnu
say "building a static brownout-mcp-server"
(cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release --locked --bin brownout-mcp-server --target "$triple")
server="${CARGO_TARGET_DIR:-$root/target}/$triple/release/brownout-mcp-server"
if ldd "$server" 2>/dev/null | grep -q "=>"; then
    say "$server is not statically linked"
    exit 1
fi

busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" 2>/dev/null | grep -q "=>"; then
    say "$busybox is missing or not static: install Debian's busybox-static"
    exit 1
fi

# The newest kernel package the apt lists know; downloaded once into the cache.
kpkg="${BROWNOUT_KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-/ {print $2; exit}')}"
if [ -z "$kpkg" ]; then
    say "no linux-image-amd64 in the apt lists: run apt-get update"
    exit 1
fi
deb="$(ls "$out/cache/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$deb" ]; then
    say "downloading $kpkg"
    (cd "$out/cache" && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb="$(ls "$out/cache/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ]; then
        say "could not download $kpkg"
        exit 1
    fi
fi

# Modules in the order they must load (each after what it depends on). The package has
# no modules.dep, so the order comes from each module's own `depends` field.
modules="virtio_mmio virtio_net virtio-rng 9pnet_virtio 9p"

stamp="$( (sha256sum "$deb" "$busybox" "$server" "$0" | awk '{print $1}'; echo "$modules") | sha256sum | awk '{print $1}')"
if [ -f "$out/image.txt" ] && grep -q "^stamp $stamp$" "$out/image.txt" &&
    [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio" ]; then
    say "up to date ($out)"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/brownout-guest-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "unpacking $(basename "$deb")"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*' './lib/modules/*'
kdir="$(ls -d "$work"/lib/modules/*)"

# vmlinuz is a bzImage with an xz payload; booting the payload itself skips the
# decompression, which costs seconds under TCG.
vmlinuz="$(ls "$work"/boot/vmlinuz-*)"
offset="$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1)"
if [ -z "$offset" ]; then
    say "$vmlinuz: no xz payload found"
    exit 1
fi
tail -c "+$((offset + 1))" "$vmlinuz" | xz -dc >"$work/vmlinux" 2>/dev/null || true
if ! head -c4 "$work/vmlinux" | grep -q $'\x7fELF'; then
    say "$vmlinuz: the xz payload is not an ELF kernel"
    exit 1
fi

ordered=""
add_module() {
    local name="$1" file dep
    case " $ordered " in *" $name "*) return ;; esac
    file="$(find "$kdir" -name "$name.ko" | head -n1)"
    if [ -z "$file" ]; then
        say "module $name not in $(basename "$deb")"
        exit 1
    fi
    for dep in $(tr '\0' '\n' <"$file" | grep -a '^depends=' | head -n1 | cut -d= -f2 | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$file" "$work/initramfs/lib/modules/"
    ordered="$ordered $name"
}
mkdir -p "$work/initramfs"/{bin,dev,proc,sys,data,tmp,lib/modules}
for m in $modules; do add_module "$m"; done
echo $ordered >"$work/initramfs/lib/modules/order"

cp "$busybox" "$work/initramfs/bin/busybox"
strip --strip-all -o "$work/initramfs/bin/brownout-mcp-server" "$server"
cat >"$work/initramfs/init" <<'INIT'
#!/bin/busybox sh
# brownout guest init: modules, network (QEMU user mode), the data share, the server.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# insmod does not read module parameters off the kernel command line (modprobe would):
# pass them on, e.g. the virtio_mmio.device= entries QEMU's microvm adds.
for m in $(cat /lib/modules/order); do
    params=""
    for arg in $(cat /proc/cmdline); do
        case "$arg" in "$m".*=*) params="$params ${arg#"$m".}" ;; esac
    done
    insmod "/lib/modules/$m.ko" $params || echo "brownout-guest: insmod $m failed"
done
# Without its devices the guest can never be reached: say so and stop, so the host can
# boot it again at once (under TCG on a busy host the kernel sometimes fails to enable
# ACPI, which is how microvm's virtio-mmio devices are found).
if [ ! -e /sys/class/net/eth0 ]; then
    echo "brownout-guest: no network device; powering off"
    poweroff -f
fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
if grep -q 'brownout.data=9p' /proc/cmdline; then
    mount -t 9p -o trans=virtio,version=9p2000.L,cache=none data /data ||
        echo "brownout-guest: mounting the data share failed"
fi
echo "brownout-guest: starting the server"
brownout-mcp-server --root /data --http 0.0.0.0:8000 </dev/null
echo "brownout-guest: server exited with $?"
sync
poweroff -f
INIT
chmod +x "$work/initramfs/init"

(cd "$work/initramfs" && find . | "$busybox" cpio -o -H newc 2>/dev/null) >"$work/initramfs.cpio"
# QEMU loads the initrd at the top of RAM, its start rounded down to a page, and microvm's
# ACPI tables sit in the last bytes of RAM too: an archive that ends within them overwrites
# them (the guest then hangs in ACPI setup). Zeros after the cpio trailer, which the kernel
# skips, make the size 1 more than a multiple of 4 KiB, so it ends 4095 bytes below the top.
size=$(stat -c %s "$work/initramfs.cpio")
head -c $(((4097 - size % 4096) % 4096)) /dev/zero >>"$work/initramfs.cpio"
mv "$work/vmlinux" "$out/vmlinux"
mv "$work/initramfs.cpio" "$out/initramfs.cpio"
{
    echo "stamp $stamp"
    echo "kernel $(basename "$deb") $(sha256sum "$deb" | awk '{print $1}')"
    echo "busybox $(sha256sum "$busybox" | awk '{print $1}')"
    echo "server $(sha256sum "$server" | awk '{print $1}')"
    echo "modules $ordered"
} >"$out/image.txt"
say "built $out (kernel $(du -h "$out/vmlinux" | cut -f1), initramfs $(du -h "$out/initramfs.cpio" | cut -f1))"
