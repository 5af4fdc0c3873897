#!/usr/bin/env bash
# Install what the tests need, then run every check: formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests drive brownout with, from PyPI: a third-party Toxiproxy client, and
# the MCP Python SDK (client and server).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import toxiproxy, mcp' 2>/dev/null; then
    echo "==> installing toxiproxy-python and the MCP SDK into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check toxiproxy-python==0.1.1 mcp==2.3.0
fi

# A real third-party MCP server from npm, for the tests that put brownout in front of one.
if [ ! -f .node/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
    echo "==> installing @modelcontextprotocol/server-everything into .node"
    command -v npm >/dev/null || { echo "npm is needed (Node.js 20 or later)"; exit 1; }
    npm install --silent --no-audit --no-fund --prefix .node @modelcontextprotocol/server-everything@2026.8.31
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked
