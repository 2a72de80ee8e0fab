"""`webapp.front.Front` on its own, driven as uvicorn drives it (ASGI), with a plain WSGI app
behind it: what it receives at once, and the environ it builds."""
from __future__ import annotations

import asyncio

from webapp.front import LARGE_BODY, Front
from webapp.settings import Settings


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['QUERY_STRING']} "
            f"{environ.get('HTTP_X_TWICE')} {len(body)}".encode()]


def scope(method="POST", path="/api/search", headers=()):
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "query_string": b"k=3", "headers": list(headers), "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000), "scheme": "http", "http_version": "1.1"}


def test_large_bodies_are_received_as_many_at_a_time_as_the_worker_has_threads():
    front = Front(echo, Settings(gallery="g", threads=3))
    receiving, most = [0], [0]
    release = asyncio.Event()

    async def one_large():
        async def receive():
            receiving[0] += 1
            most[0] = max(most[0], receiving[0])
            await release.wait()
            receiving[0] -= 1
            return {"type": "http.request", "body": b"x" * (LARGE_BODY + 1), "more_body": False}

        sent = []

        async def send(message):
            sent.append(message)

        await front(scope(headers=[(b"content-length", str(LARGE_BODY + 1).encode())]), receive,
                    send)
        return sent

    async def one_small():
        async def receive():
            return {"type": "http.request", "body": b"abc", "more_body": False}

        sent = []

        async def send(message):
            sent.append(message)

        await front(scope(headers=[(b"content-length", b"3")]), receive, send)
        return sent

    async def main():
        large = [asyncio.create_task(one_large()) for _ in range(7)]
        await asyncio.sleep(0.2)
        small = await one_small()  # answered while the large ones wait
        assert most[0] == 3 and small[1]["body"].endswith(b" 3")
        release.set()
        return await asyncio.gather(*large)

    answers = asyncio.run(main())
    assert all(a[0]["status"] == 200 for a in answers)
    assert all(a[1]["body"].endswith(f" {LARGE_BODY + 1}".encode()) for a in answers)
    front.pool.shutdown()


def test_the_environ_is_what_a_wsgi_server_gives():
    front = Front(echo, Settings(gallery="g"))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(front(scope("GET", "/gallery/caf%C3%A9", [(b"x-twice", b"a"), (b"x-twice", b"b")]),
                      receive, send))
    # The path as undecoded bytes in Latin-1 (PEP 3333), repeated headers joined.
    assert sent[1]["body"] == "GET /gallery/cafÃ© k=3 a,b 0".encode()
    front.pool.shutdown()


def test_a_request_decoding_a_huge_image_steps_aside_for_the_others():
    """With one request at a time, a request waiting for a decode slot (both held: two huge
    decodes elsewhere) gives up its turn, so the next request is answered meanwhile; it takes
    its turn again once it has decoded."""
    import io

    import numpy as np
    from PIL import Image

    from encoder import images

    out = io.BytesIO()
    Image.fromarray(np.full((1200, 1200), 90, np.uint8)).save(out, "PNG")
    huge = out.getvalue()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/huge":
            size = images.decode_shrunk(huge, "huge", images.Preprocessing(28, 28, 1))[1]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"decoded {size[0]}x{size[1]}".encode()]
        return echo(environ, start_response)

    front = Front(app, Settings(gallery="g", threads=1))

    async def call(path):
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        sent = []

        async def send(message):
            sent.append(message)

        await front(scope(path=path), receive, send)
        return sent[1]["body"]

    async def main():
        waiting = asyncio.create_task(call("/huge"))
        await asyncio.sleep(0.2)  # it has its turn, and waits for a slot
        other = await asyncio.wait_for(call("/api/search"), timeout=60)
        assert not waiting.done() and other.startswith(b"POST /api/search")
        for _ in range(images.DECODE_SLOT_COUNT):
            images.DECODE_SLOTS.release()
        released[0] = True
        return await asyncio.wait_for(waiting, timeout=60)

    released = [False]
    for _ in range(images.DECODE_SLOT_COUNT):
        images.DECODE_SLOTS.acquire()
    try:
        assert asyncio.run(main()) == b"decoded 1200x1200"
    finally:
        if not released[0]:
            for _ in range(images.DECODE_SLOT_COUNT):
                images.DECODE_SLOTS.release()
        front.pool.shutdown(wait=False)
