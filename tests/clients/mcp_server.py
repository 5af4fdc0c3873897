"""A real MCP server (the Python SDK's MCPServer), for brownout's tests.

Over stdio by default; `--http PORT` serves Streamable HTTP on 127.0.0.1:PORT at /mcp, with
responses as SSE streams, or as JSON bodies with `--json`. Writes its PID to the file named
by BROWNOUT_TEST_PIDFILE, if set, so a test can check that it was stopped.
"""
import os
import sys

from mcp.server.mcpserver import MCPServer

if os.environ.get("BROWNOUT_TEST_PIDFILE"):
    with open(os.environ["BROWNOUT_TEST_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))

server = MCPServer("brownout-test-server")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


if __name__ == "__main__":
    if "--http" in sys.argv:
        port = int(sys.argv[sys.argv.index("--http") + 1])
        server.run("streamable-http", host="127.0.0.1", port=port, json_response="--json" in sys.argv)
    else:
        server.run()
