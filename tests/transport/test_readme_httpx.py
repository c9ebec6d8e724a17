"""The README's httpx section run as written, against loopback backends: its first block
(the async client, ``from_env`` in a mounted sync client, one pool shared with the requests
adapter) and its FastAPI endpoint (its lifespan run, called through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import httpx
import requests
from fastapi import FastAPI, Request

import lbmiddleware as lb

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## httpx transports\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def with_backends(code: str, backends) -> str:
    """The block with the README's two addresses swapped for the test's backends."""
    return (code.replace("http://127.0.0.1:8001", backends[0].url)
                .replace("http://127.0.0.1:8002", backends[1].url))


def test_the_first_block_runs_as_written(backends, monkeypatch):
    monkeypatch.setenv("LB_BACKENDS", backends[2].url)
    code = with_backends(python_blocks()[0], backends)
    namespace: dict[str, Any] = {"session": requests.Session()}
    # (top-level `async with` is for an async function: the block is run as one)
    exec(compile("async def readme():\n" + textwrap.indent(code, "    ") + "\n    return locals()",
                 "README.md", "exec"), namespace)
    scope = asyncio.run(namespace["readme"]())
    assert scope["r"].status_code == 200
    assert scope["r"].json()["path"] == "/api/items?page=2"
    assert scope["r"].json()["server"] in ("a", "b")
    assert backends[2].requests == 1                        # from_env: LB_BACKENDS
    assert isinstance(scope["client"], httpx.AsyncClient)
    assert scope["pool"].settings.max_fails == 3
    assert namespace["session"].get("http://orders/x").json()["server"] in ("a", "b")


def test_the_fastapi_block_runs_as_written(backends, monkeypatch):
    monkeypatch.setenv("LB_BACKENDS", ",".join(s.url for s in backends))
    namespace: dict[str, Any] = {"contextlib": contextlib, "AsyncIterator": AsyncIterator,
                                 "FastAPI": FastAPI, "Request": Request, "Any": Any,
                                 "httpx": httpx, "lb": lb}
    exec(compile(python_blocks()[1], "README.md", "exec"), namespace)
    app = namespace["app"]

    async def scenario() -> list[Any]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return [(await client.get(f"/items/{i}")).json() for i in range(3)]

    served = asyncio.run(scenario())
    assert [echo["path"] for echo in served] == ["/items/0", "/items/1", "/items/2"]
    assert sorted(echo["server"] for echo in served) == ["a", "b", "c"]
