"""A FastAPI service whose endpoints call the replicas of another service through one pool.

The app keeps one ``httpx.AsyncClient`` over an ``AsyncLoadBalancingTransport`` for its
whole life (opened and closed by the lifespan): every call from an endpoint goes to one
replica, a replica that fails is retried on another and then avoided, and the event loop
is never blocked. With the demo's backends (fast, slow and flaky), in one terminal::

    python -m lbmiddleware.demo.backends          # prints LB_BACKENDS=http://127.0.0.1:...

and in another, with the line it printed (``pip install 'lbmiddleware[httpx]' fastapi
uvicorn``)::

    LB_BACKENDS=http://127.0.0.1:41001,http://127.0.0.1:41002,http://127.0.0.1:41003 \\
        LB_POLICY=latency python examples/fastapi_replicas.py --port 8000

then ``curl localhost:8000/items/7`` (one call to a replica), ``curl
'localhost:8000/fan-out?calls=10'`` (ten at once, spread over the replicas) and ``curl
localhost:8000/replicas`` (the pool as it is). Every other ``LB_*`` setting applies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request

import lbmiddleware as lb

#: The virtual host the app calls: any name, the pool decides where each call goes.
SERVICE = "http://inventory"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client, one pool, for the app's life (``LB_BACKENDS``, ``LB_POLICY``, ...); the
    transport balances the calls to SERVICE (anything else the client fetches, a redirect
    elsewhere, goes where its URL says)."""
    transport = lb.AsyncLoadBalancingTransport.from_env(origin=SERVICE)
    async with httpx.AsyncClient(transport=transport, base_url=SERVICE, timeout=5) as client:
        app.state.inventory = client
        app.state.pool = transport.balancer
        yield


app = FastAPI(title="replicas example", lifespan=lifespan)


def inventory(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.inventory
    return client


Inventory = Annotated[httpx.AsyncClient, Depends(inventory)]


async def call(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    """One call to a replica: what it answered, or the error a FastAPI client should get."""
    try:
        response = await client.get(path)
    except lb.NoHealthyBackend as exc:          # every replica is out: try later
        raise HTTPException(503, f"no inventory replica available: {exc}") from exc
    except httpx.TransportError as exc:         # each replica tried failed
        raise HTTPException(502, f"the inventory service failed: {exc}") from exc
    kind = response.headers.get("Content-Type", "")
    body = response.json() if kind.startswith("application/json") else response.text
    return {"status": response.status_code, "body": body}


@app.get("/items/{item_id}")
async def item(item_id: int, client: Inventory) -> dict[str, Any]:
    return {"item": item_id, "inventory": await call(client, f"/items/{item_id}")}


@app.get("/fan-out")
async def fan_out(client: Inventory, calls: int = 3) -> dict[str, Any]:
    """``calls`` calls at once: the pool spreads them over the replicas."""
    if not 1 <= calls <= 100:
        raise HTTPException(422, f"calls has value {calls}: give 1 to 100")
    answers = await asyncio.gather(*(call(client, f"/items/{i}") for i in range(calls)))
    return {"calls": calls, "answers": answers}


@app.get("/replicas")
async def replicas(request: Request) -> list[dict[str, Any]]:
    """The pool as it is: each replica's state and counts."""
    pool: lb.Balancer = request.app.state.pool
    return [{key: row[key] for key in ("url", "state", "in_flight", "requests", "failures")}
            for row in pool.stats()]


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host`` (a name or an IPv4 or IPv6 address: its own address
    family) and ``port`` (0: any free one)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    args = parser.parse_args(argv)
    try:                                                # a bad setting: say so, exit 2
        lb.Settings.from_env()
        lb.ForwardingSettings.from_env()
    except lb.ConfigError as exc:
        print(f"{exc}\n(see the top of {__file__} for how to run it)", file=sys.stderr)
        return 2
    try:                                                # a port in use: the same
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host     # an IPv6 address
    print(f"serving on http://{host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
