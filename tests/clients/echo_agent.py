"""A stand-in for a user's own agent: N `echo` tool calls over MCP Streamable HTTP to
$BROWNOUT_URL, with the Python standard library only. Prints each outcome; exits 0 if
every call came back with its text, 1 otherwise.

Usage: echo_agent.py N
"""

import json
import os
import sys
import urllib.request

URL = os.environ["BROWNOUT_URL"]
TIMEOUT = 2.0


def post(body, session=None):
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
    }
    if session:
        headers["mcp-session-id"] = session
    req = urllib.request.Request(URL, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        text = r.read().decode()
        sid = r.headers.get("mcp-session-id")
    # One JSON body, or SSE events whose data lines carry the messages.
    messages = []
    if text.lstrip().startswith("{"):
        messages.append(json.loads(text))
    else:
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                messages.append(json.loads(line[5:]))
    return sid, messages


def main():
    n = int(sys.argv[1])
    session, _ = post(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "echo-agent", "version": "1"},
            },
        }
    )
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    good = 0
    for i in range(1, n + 1):
        text = f"call {i}"
        try:
            _, messages = post(
                {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": text}},
                },
                session,
            )
        except Exception as e:  # a timeout or a cut connection: this call failed
            print(f"{i}: no answer: {e}", flush=True)
            continue
        answer = next((m for m in messages if m.get("id") == i), None)
        if answer and answer.get("result", {}).get("content", [{}])[0].get("text") == text:
            good += 1
            print(f"{i}: ok", flush=True)
        else:
            print(f"{i}: bad answer: {answer}", flush=True)
    print(f"{good} of {n} calls came back", flush=True)
    sys.exit(0 if good == n else 1)


main()
