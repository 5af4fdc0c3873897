"""A real MCP server (the Python SDK's MCPServer) over stdio, for brownout's tests.

Writes its PID to the file named by BROWNOUT_TEST_PIDFILE, if set, so a test can check
that it was stopped.
"""
import os

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
    server.run()
