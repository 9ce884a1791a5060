"""Drives the gateway's MCP server with the official MCP Python SDK (PyPI `mcp`).

Run by tests/mcp.rs in the venv of tests/mcp/requirements.txt:

    python tests/mcp/client.py TRANSPORT URL TOKEN_FILE BINARY SHARED_USER

TRANSPORT `http` speaks Streamable HTTP to URL/mcp with the token of TOKEN_FILE;
`stdio` launches `BINARY mcp --url URL --token-file TOKEN_FILE` and speaks to it over
stdin/stdout, as desktop clients do. SHARED_USER is a REST API user whose session
holds `shared_value = 42`.
Every check asserts; each passed check prints `ok: <name>`. Exit status 0 means all passed.
"""

import asyncio
import base64
import sys
import time

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

TOOLS = {"execute_python", "list_files", "read_file", "write_file", "reset_session"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ok(name: str) -> None:
    print(f"ok: {name}", flush=True)


def texts(result) -> str:
    return "".join(c.text for c in result.content if c.type == "text")


class Connect:
    """A new MCP session (a new Client) over the chosen transport."""

    def __init__(self, argv: list[str]):
        self.transport, self.url, self.token_file, self.binary = argv[:4]
        with open(self.token_file) as f:
            self.token = f.readline().strip()

    def __call__(self, auth: str = "bearer") -> Client:
        if self.transport == "http":
            headers = (
                {"Authorization": f"Bearer {self.token}"}
                if auth == "bearer"
                else {"X-Auth-Token": self.token}
            )
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
            transport = streamable_http_client(
                f"{self.url}/mcp", http_client=http, max_sse_event_size=None
            )
            return Client(transport, read_timeout_seconds=120)
        params = StdioServerParameters(
            command=self.binary, args=["mcp", "--url", self.url, "--token-file", self.token_file]
        )
        return Client(params, read_timeout_seconds=120)


async def run(client: Client, code: str, **extra):
    return await client.call_tool("execute_python", {"code": code, **extra})


async def tools_are_listed(client: Client) -> None:
    listed = await client.list_tools()
    names = {tool.name for tool in listed.tools}
    assert names == TOOLS, names
    for tool in listed.tools:
        assert tool.description and len(tool.description) > 40, tool
        assert tool.input_schema["type"] == "object", tool.input_schema
    execute = next(t for t in listed.tools if t.name == "execute_python")
    assert execute.input_schema["required"] == ["code"], execute.input_schema
    assert "timeout" in execute.input_schema["properties"], execute.input_schema
    ok("initialize and list the tools")


async def state_persists(client: Client) -> None:
    first = await run(client, "a = 1")
    assert not first.is_error, first
    second = await run(client, "a + 1")
    assert not second.is_error, second
    assert texts(second).strip() == "2", second
    printed = await run(client, "print('out'); import sys; print('err', file=sys.stderr); a")
    assert [c.type for c in printed.content] == ["text", "text", "text"], printed
    assert texts(printed) == "out\n[stderr]\nerr\n1", printed
    ok("stateful code: a = 1, then a + 1")


async def plots_are_images(client: Client) -> None:
    result = await run(
        client,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()",
    )
    assert not result.is_error, result
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 1, result
    assert images[0].mime_type == "image/png", images[0].mime_type
    data = base64.b64decode(images[0].data)
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, len(data)
    ok("a matplotlib PNG as image content")


async def files_round_trip(client: Client) -> None:
    csv = "month,sales\nJan,120\nFeb,135\nMar,160\n"
    wrote = await client.call_tool("write_file", {"path": "data/sales.csv", "content": csv})
    assert not wrote.is_error, wrote
    assert f"wrote {len(csv)} bytes to /sandbox/data/sales.csv" in texts(wrote), wrote
    summed = await run(
        client,
        "import pandas as pd\ndf = pd.read_csv('data/sales.csv')\n"
        "df['double'] = df.sales * 2\ndf.to_csv('out.csv', index=False)\nint(df.sales.sum())",
    )
    assert texts(summed).strip() == "415", summed
    back = await client.call_tool("read_file", {"path": "/sandbox/data/sales.csv"})
    assert texts(back) == csv, back
    assert back.structured_content["encoding"] == "utf-8", back.structured_content
    out = await client.call_tool("read_file", {"path": "out.csv"})
    assert texts(out).splitlines()[1] == "Jan,120,240", out
    listed = await client.call_tool("list_files", {})
    names = {f["name"] for f in listed.structured_content["files"]}
    assert {"data/sales.csv", "out.csv"} <= names, names
    blob = bytes(range(256))
    wrote = await client.call_tool(
        "write_file",
        {"path": "blob.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"},
    )
    assert not wrote.is_error, wrote
    back = await client.call_tool("read_file", {"path": "blob.bin"})
    assert back.structured_content["encoding"] == "base64", back.structured_content
    assert base64.b64decode(texts(back)) == blob
    size = await run(client, "import os; os.path.getsize('blob.bin')")
    assert texts(size).strip() == "256", size
    outside = await client.call_tool("read_file", {"path": "/etc/passwd"})
    assert outside.is_error and "work directory" in texts(outside), outside
    missing = await client.call_tool("read_file", {"path": "nope.txt"})
    assert missing.is_error and "no such file" in texts(missing), missing
    ok("write a CSV and read it back with pandas (and files both ways)")


async def errors_are_reported(client: Client) -> None:
    raised = await run(client, "1 / 0")
    assert raised.is_error, raised
    assert "ZeroDivisionError: division by zero" in texts(raised), raised
    assert "Traceback" in texts(raised) or "----" in texts(raised), raised
    intact = await run(client, "a")
    assert texts(intact).strip() == "1", intact
    empty = await run(client, "   ")
    assert empty.is_error and "code must not be empty" in texts(empty), empty
    try:
        bad = await client.call_tool("execute_python", {"cod": "1"})
    except Exception as e:  # an MCP invalid-params error
        assert "code" in str(e), e
    else:
        assert bad.is_error, bad
    ok("exceptions and bad arguments come back as errors")


async def long_runs_stream_and_cancel(client: Client) -> None:
    await run(client, "b = 41")
    seen: list[tuple[float, str]] = []
    first = anyio.Event()
    started = time.monotonic()

    async def progress(value: float, total, message) -> None:
        seen.append((time.monotonic() - started, message or ""))
        first.set()

    code = "import time\nfor i in range(600):\n    print(i, flush=True)\n    time.sleep(0.1)\n"
    async with anyio.create_task_group() as group:

        async def call() -> None:
            await client.call_tool(
                "execute_python", {"code": code}, progress_callback=progress
            )

        group.start_soon(call)
        with anyio.fail_after(30):
            await first.wait()
        await anyio.sleep(1.0)
        group.cancel_scope.cancel()
    assert seen and seen[0][1].startswith("0"), seen
    assert seen[0][0] < 10, f"the first output came after {seen[0][0]:.1f} s"
    assert len(seen) >= 3, seen
    # The kernel was interrupted: the loop stopped early, and the session is the same one.
    after = await run(client, "b + 1, i < 100")
    assert not after.is_error, after
    assert texts(after).strip() == "(42, True)", after
    assert "fresh" not in texts(after), after
    ok(f"a long run streams progress ({len(seen)} notifications, first after "
       f"{seen[0][0]:.2f} s) and a cancel interrupts it, keeping the session")


async def a_timeout_resets(client: Client) -> None:
    started = time.monotonic()
    hung = await run(client, "while True: pass", timeout=2)
    took = time.monotonic() - started
    assert hung.is_error, hung
    text = texts(hung)
    assert "2.0 s timeout; the session was reset" in text, text
    assert "fresh Python session" in text, text
    assert took < 20, took
    fresh = await run(client, "a")
    assert fresh.is_error, fresh
    assert "fresh Python session" in texts(fresh) and "NameError" in texts(fresh), fresh
    again = await run(client, "a = 5; a")
    assert texts(again).strip() == "5", again
    ok(f"a timeout is an error that says the session was reset ({took:.1f} s), then a fresh session")


async def sessions_are_isolated(connect: Connect) -> None:
    async with connect() as one, connect(auth="x-auth-token") as two:
        await asyncio.gather(run(one, "secret = 'one'"), run(two, "secret = 'two'"))
        a, b = await asyncio.gather(run(one, "secret"), run(two, "secret"))
        assert texts(a).strip() == "'one'", a
        assert texts(b).strip() == "'two'", b
        leaked = await run(two, "a")
        assert leaked.is_error and "NameError" in texts(leaked), leaked
        files = await one.call_tool("write_file", {"path": "mine.txt", "content": "1"})
        assert not files.is_error
        other = await two.call_tool("read_file", {"path": "mine.txt"})
        assert other.is_error, other
        reset = await one.call_tool("reset_session", {})
        assert "released" in texts(reset), reset
        gone = await run(one, "secret")
        assert gone.is_error and "NameError" in texts(gone), gone
        still = await run(two, "secret")
        assert texts(still).strip() == "'two'", still
    ok("two MCP sessions at once never see each other's variables or files")


async def shared_with_rest(client: Client, user: str) -> None:
    shared = await run(client, "shared_value * 2", user_uuid=user)
    assert texts(shared).strip() == "84", shared
    mine = await run(client, "'shared_value' in dir()")
    assert texts(mine).strip() == "False", mine
    ok("an explicit user_uuid shares the REST API's session")


async def main(argv: list[str]) -> None:
    connect = Connect(argv)
    async with connect() as client:
        await tools_are_listed(client)
        await state_persists(client)
        await plots_are_images(client)
        await files_round_trip(client)
        await errors_are_reported(client)
        await long_runs_stream_and_cancel(client)
        await a_timeout_resets(client)
        await shared_with_rest(client, argv[4])
    await sessions_are_isolated(connect)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
