"""The usual Python way to write a proxy (``bench_proxy.py``'s "aiohttp pass-through" row):
an ASGI app under uvicorn (uvloop + httptools, as the gateway's ASGI path) forwarding each
request round-robin with ``aiohttp.ClientSession``, hop-by-hop headers dropped, the body
streamed back. No balancer, no retries: a peer baseline, not a proxy to run.

    python benchmarks/proxy_layers/aiohttp_passthrough.py --listen 127.0.0.1:8000 \
        --backend http://127.0.0.1:8001 --backend http://127.0.0.1:8002
"""

from __future__ import annotations

import argparse
from typing import Any

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
       "upgrade", "host", "content-length"}


class AiohttpPassThrough:
    """A plain round-robin pass-through proxy on aiohttp's client."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.turn = 0
        self.session: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        import aiohttp

        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.turn += 1
        url = self.backends[self.turn % len(self.backends)] + scope["raw_path"].decode()
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode() not in HOP]
        async with self.session.request(scope["method"], url, headers=headers, data=body or None,
                                        allow_redirects=False) as response:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(k.lower().encode(), v.encode())
                                    for k, v in response.headers.items() if k.lower() not in HOP]})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--backend", action="append", required=True, help="URL (repeat)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(AiohttpPassThrough([url.rstrip("/") for url in args.backend]), host=host,
                port=int(port), loop="uvloop", http="httptools", access_log=False,
                log_level="warning", lifespan="on", server_header=False, date_header=False)


if __name__ == "__main__":
    main()
