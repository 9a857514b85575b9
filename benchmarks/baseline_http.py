"""Baseline for the REST figure: a bare aiohttp app answering every request with JSON.

    python benchmarks/baseline_http.py PORT

No middlewares, no storage, no auth: it reads the body (if any) and answers a
small JSON document shaped like the service's presence request answer.
"""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = {
    "data": {
        "id": "0123456789abcdef01234567",
        "fromUserId": "89abcdef0123456789abcdef",
        "toUserId": "fedcba9876543210fedcba98",
        "status": "pending",
        "requestDate": "2026-01-01T00:00:00.000Z",
    }
}


async def handle(request: web.Request) -> web.Response:
    if request.can_read_body:
        await request.read()
    return web.json_response(ANSWER)


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
