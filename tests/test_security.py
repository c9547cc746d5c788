"""The web surface through a live server on 127.0.0.1: forged Host headers, cross-origin calls, oversized
uploads and wrong logins, sent as raw HTTP (``http.client``) so every header is exactly what we forge."""

from __future__ import annotations

import http.client
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gal_studio import app
from gal_studio.security import (
    LoginThrottle,
    WebGuard,
    WebPolicy,
    check_allowed_host,
    client_key,
    host_name,
    parse_size,
)

BOUNDARY = "gal-test-boundary"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path_factory, *flags):
    port = free_port()
    runs = tmp_path_factory.mktemp("runs")
    args = app.build_parser().parse_args(
        ["--runs-dir", str(runs), "--model", "tiny", "--oracle", "tiny", "--port", str(port), *flags]
    )
    studio, demo, kwargs = app.create_app(args)
    demo.queue(default_concurrency_limit=1)
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    return port, studio, demo


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Gradio's upload cache for this module's servers: a temporary folder, so what lands there is counted."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


def stored(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def server(tmp_path_factory, uploads):
    port, studio, demo = launch(tmp_path_factory, "--allowed-host", "studio.example")
    yield port, studio
    demo.close()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, uploads):
    port, _, demo = launch(tmp_path_factory, "--auth", "me:secret")
    yield port
    demo.close()


def request(port, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def multipart(name: str = "ref.png") -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(port, size: int, headers=None, declared: int | None = None):
    """POST a ``size``-byte file (zeros, streamed 1 MiB at a time) to the upload route;
    (status, body, bytes sent).

    ``declared`` sends a Content-Length of that many body bytes but only the part's header: the server
    must answer from the header alone."""
    head, tail = multipart()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest("POST", "/gradio_api/upload", skip_host="Host" in (headers or {}))
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(declared if declared is not None else len(head) + size + len(tail)))
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    sent = 0
    try:
        conn.send(head)
        if declared is None:
            chunk = b"\0" * (1 << 20)
            while sent < size:
                conn.send(chunk[: min(len(chunk), size - sent)])
                sent += min(len(chunk), size - sent)
            conn.send(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent
    try:
        response = conn.getresponse()
        return response.status, response.read(), sent
    finally:
        conn.close()


# -- Host allow-list ------------------------------------------------------------------------------------


def test_a_forged_host_is_refused_on_every_route(server):
    port, studio = server
    served = studio.runs_root / "served.txt"
    served.write_text("a run folder file")
    routes = [
        ("GET", "/"),
        ("GET", "/config"),
        ("GET", "/gradio_api/info"),
        ("GET", f"/gradio_api/file={served}"),
        ("GET", "/gradio_api/queue/data?session_hash=abc"),
        ("GET", "/gradio_api/heartbeat/abc"),
        ("POST", "/gradio_api/queue/join"),
        ("POST", "/gradio_api/upload"),
        ("POST", "/login"),
        ("OPTIONS", "/gradio_api/info"),
    ]
    for method, path in routes:
        for host in (
            f"evil.example:{port}",
            "evil.example",
            f"127.0.0.1.evil.example:{port}",
            "localhost.",
            "a:b",
        ):
            status, _, body = request(port, method, path, {"Host": host})
            assert status == 400, (method, path, host, status)
            assert b"is not allowed here" in body and b"--allowed-host" in body
            assert f"http://127.0.0.1:{port}/".encode() in body
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
        "studio.example",
        "Studio.Example:443",
    ):
        for path in ("/", "/config", f"/gradio_api/file={served}"):
            status, _, body = request(port, "GET", path, {"Host": host})
            assert status == 200, (path, host, status, body[:200])
    assert request(port, "GET", f"/gradio_api/file={served}")[2] == b"a run folder file"


# -- Origin check -----------------------------------------------------------------------------------------


def test_cross_origin_state_changes_are_refused_and_same_origin_ones_pass(server, uploads):
    port, _ = server
    before = stored(uploads)
    for origin in (
        "http://evil.example",
        f"http://evil.example:{port}",
        "null",
        f"http://localhost:{port + 1}",
        "file://",
        "http://studio.example.evil.example",
    ):
        status, body, _ = upload(port, 1024, {"Origin": origin})
        assert status == 403, (origin, status)
        assert b"cross-origin POST" in body and b"--allowed-host" in body
        status, _, body = request(
            port,
            "POST",
            "/gradio_api/queue/join",
            {"Origin": origin, "Content-Type": "application/json"},
            b"{}",
        )
        assert status == 403, (origin, status, body)
    assert stored(uploads) == before  # nothing refused was stored
    for headers in (
        {},
        {"Origin": f"http://127.0.0.1:{port}"},
        {"Origin": "https://studio.example"},
        {"Origin": "http://localhost", "Host": "localhost"},
    ):
        status, body, _ = upload(port, 1024, headers)
        assert status == 200 and body.startswith(b'["'), (headers, status, body[:200])
    # A read passes with any Origin: the browser's CORS rules keep a foreign page from reading it.
    assert request(port, "GET", "/config", {"Origin": "http://evil.example"})[0] == 200
    # Past the guard, Gradio validates the (empty) join: a same-origin call reaches the route.
    same = {"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json"}
    assert request(port, "POST", "/gradio_api/queue/join", same, b"{}")[0] == 422


def test_gradio_client_still_works(server):
    from gradio_client import Client

    port, _ = server
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    runs, _ = client.predict(api_name="/runs")
    assert "data" in runs


# -- Upload bound ------------------------------------------------------------------------------------------


def test_uploads_are_bounded(server, uploads):
    port, _ = server
    status, body, _ = upload(port, 5 << 20)  # a large reference photo: accepted
    assert status == 200, body[:200]
    time.sleep(0.2)  # Gradio moves the file into its cache in a background task
    before = stored(uploads)
    assert any(p.stat().st_size == 5 << 20 for p in before)
    status, body, _ = upload(port, 50 << 20)  # over the 20 MB default: Gradio stops at the bound
    assert status == 413 and b"maximum allowed size of 20971520 bytes" in body
    started = time.perf_counter()
    status, body, sent = upload(port, 0, declared=1 << 30)  # 1 GiB announced, never sent
    assert status == 413 and b"--max-file-size" in body and sent == 0
    assert time.perf_counter() - started < 5
    assert stored(uploads) == before, [(p.name, p.stat().st_size) for p in stored(uploads)]


def test_a_chunked_body_is_cut_at_the_bound():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    guarded = WebGuard(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), WebPolicy(max_body=10_000))
    client = TestClient(guarded, base_url="http://127.0.0.1")

    def chunks(n):
        for _ in range(n):
            yield b"x" * 1000

    small = client.post("/echo", content=chunks(10))
    assert (small.status_code, small.text) == (200, "10000")
    big = client.post("/echo", content=chunks(11))
    assert big.status_code == 413 and "--max-file-size" in big.text
    assert client.post("/echo", content=b"x" * 10_001).status_code == 413  # by Content-Length


# -- Login throttle ---------------------------------------------------------------------------------------


def login(port, password: str):
    return request(port, "POST", "/login", FORM, f"username=me&password={password}".encode())


def test_wrong_logins_back_off_and_the_right_one_works_after(auth_server):
    port = auth_server
    assert [login(port, f"wrong{i}")[0] for i in range(5)] == [400] * 5
    status, headers, body = login(port, "secret")  # even the right password waits out the backoff
    assert status == 429 and b"too many wrong logins" in body
    wait = int(headers["retry-after"])
    assert wait == 1
    time.sleep(wait + 0.1)
    status, headers, _ = login(port, "secret")
    assert status == 200 and "access-token" in headers.get("set-cookie", "")
    # the success cleared the count: five more wrong tries are checked, then the wait doubles per try
    assert [login(port, f"again{i}")[0] for i in range(5)] == [400] * 5
    time.sleep(1.1)
    assert login(port, "wrong6")[0] == 400
    status, headers, _ = login(port, "wrong7")
    assert status == 429 and int(headers["retry-after"]) == 2
    # a burst of parallel tries is charged as it starts: none reach the password check
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: login(port, f"burst{i}")[0], range(40)))
    assert codes == [429] * 40
    time.sleep(2.1)
    assert login(port, "secret")[0] == 200


def test_200_wrong_passwords_take_a_day_for_a_client_that_waits():
    """A client that honours Retry-After: 5 checks, then 1 s, 2 s, 4 s ... capped at 10 minutes."""
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    checked = 0
    while checked < 200:
        wait = throttle.start("203.0.113.9")
        if wait:
            now[0] += wait
        else:
            checked += 1
    assert now[0] > 24 * 3600
    assert throttle.start("198.51.100.1") == 0  # another address is not held back
    throttle.succeeded("203.0.113.9")
    assert throttle.start("203.0.113.9") == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1" and client_key("::1") == "::1"


def test_the_throttle_forgets_the_stalest_addresses_first():
    throttle = LoginThrottle(free=1, base_delay=100.0, clock=lambda: 0.0)
    assert throttle.start("198.51.100.1") == 0
    for i in range(10_000):
        throttle.start(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle._state) <= 10_000
    assert throttle.start("198.51.100.1") == 0  # dropped as the stalest: counted afresh
    assert throttle.start("10.0.39.15") > 0  # the most recent are kept, still waiting


# -- The guard on its own, and the flags ------------------------------------------------------------------


def test_websockets_get_the_host_and_origin_checks():
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    async def hello(ws):
        await ws.accept()
        await ws.send_text("hi")
        await ws.close()

    guarded = WebGuard(Starlette(routes=[WebSocketRoute("/ws", hello)]), WebPolicy())
    client = TestClient(guarded)
    here = {"Host": "127.0.0.1:7860"}
    with client.websocket_connect("/ws", headers={**here, "Origin": "http://127.0.0.1:7860"}) as ws:
        assert ws.receive_text() == "hi"
    for headers in ({**here, "Origin": "http://evil.example"}, {"Host": "evil.example"}):
        with pytest.raises(WebSocketDisconnect) as err, client.websocket_connect("/ws", headers=headers):
            pass
        assert err.value.code == 1008


def test_flags_build_the_policy_and_bad_ones_name_the_fix(tmp_path, capsys):
    policy = WebPolicy.from_flags(
        "0.0.0.0", ["studio.example", "*.lab.example"], share=False, max_file_size=10
    )
    assert policy.extra_hosts == ("studio.example", "*.lab.example")
    assert policy.host_allowed("gpu1.lab.example") and not policy.host_allowed("lab.example.evil")
    assert not policy.host_allowed("0.0.0.0")
    assert WebPolicy.from_flags("studio.lan", [], share=False, max_file_size=10).extra_hosts == (
        "studio.lan",
    )
    assert "*.gradio.live" in WebPolicy.from_flags("127.0.0.1", [], share=True, max_file_size=10).extra_hosts
    assert (host_name("[::1]:7860"), host_name("LOCALHOST:80"), host_name("x:y")) == (
        "::1",
        "localhost",
        None,
    )
    assert (parse_size("20mb"), parse_size("512k"), parse_size("100")) == (20 << 20, 512 << 10, 100)
    for bad in ("http://studio.example", "studio.example:8080", "a/b", ""):
        with pytest.raises(ValueError, match="--allowed-host takes a bare host name"):
            check_allowed_host(bad)
    for flags, message in (
        (["--allowed-host", "https://x.example"], "--allowed-host takes a bare host name"),
        (["--max-file-size", "lots"], "--max-file-size must be a size like 20mb"),
    ):
        assert app.main(["--runs-dir", str(tmp_path), *flags]) == 2
        assert message in capsys.readouterr().err


# -- issue 25: the throttle counts the socket peer; X-Forwarded-For only from named proxies ----------------


def test_x_forwarded_for_from_loopback_does_not_reset_the_throttle(tmp_path_factory, uploads):
    """A local TLS terminator or ``ssh -L`` tunnel connects from 127.0.0.1: a rotating X-Forwarded-For
    must not give each wrong login a fresh address (uvicorn's default trusts loopback's header)."""
    port, _, demo = launch(tmp_path_factory, "--auth", "me:secret")
    try:
        codes = [
            request(port, "POST", "/login", {**FORM, "X-Forwarded-For": f"10.0.0.{i}"},
                    f"username=me&password=wrong{i}".encode())[0]
            for i in range(8)
        ]  # fmt: skip
        assert codes == [400] * 5 + [429] * 3
        status, _, body = request(
            port, "POST", "/login", {**FORM, "X-Forwarded-For": "10.9.9.9"}, b"username=me&password=secret"
        )
        assert status == 429 and b"from 127.0.0.1" in body  # the right password, a fresh XFF: still waits
    finally:
        demo.close()


def test_a_named_proxy_forwards_the_client_address(tmp_path_factory, uploads):
    port, _, demo = launch(tmp_path_factory, "--auth", "me:secret", "--forwarded-allow-ips", "127.0.0.1")

    def wrong(xff, i):
        return request(
            port, "POST", "/login", {**FORM, "X-Forwarded-For": xff}, f"username=me&password=w{i}".encode()
        )

    try:
        assert [wrong("10.0.0.1", i)[0] for i in range(6)] == [400] * 5 + [429]
        assert wrong("10.0.0.2", 0)[0] == 400  # another client behind the proxy has its own count
        # a client cannot choose its address by prepending one: the proxy appends the real one last
        status, _, body = wrong("10.0.0.77, 10.0.0.1", 7)
        assert status == 429 and b"from 10.0.0.1" in body
    finally:
        demo.close()


def test_client_address_and_proxy_flags():
    policy = WebPolicy.from_flags("127.0.0.1", [], False, 1024, ["127.0.0.1,10.1.0.0/16"])
    assert policy.trusted_proxies == ("127.0.0.1/32", "10.1.0.0/16")
    assert policy.client_address("203.0.113.5", ["10.0.0.1"]) == "203.0.113.5"  # not a proxy: its header
    assert policy.client_address("127.0.0.1", ["198.51.100.1, 10.1.2.3"]) == "198.51.100.1"
    assert policy.client_address("127.0.0.1", ["evil", "198.51.100.1"]) == "198.51.100.1"
    assert policy.client_address("127.0.0.1", []) == "127.0.0.1"
    assert policy.client_address("::ffff:127.0.0.1", ["198.51.100.2"]) == "198.51.100.2"
    assert WebPolicy().client_address("127.0.0.1", ["198.51.100.1"]) == "127.0.0.1"  # the default: none
    for bad in ("*", "proxy.lan", "10.0.0.0/40"):
        with pytest.raises(ValueError, match="--forwarded-allow-ips takes the IP address or network"):
            WebPolicy.from_flags("127.0.0.1", [], False, 1024, [bad])


def test_two_host_headers_are_refused(server):
    """uvicorn's h11 parser refuses a repeated Host itself; httptools (uvicorn[standard]) and other ASGI
    servers pass both on, so the guard refuses them too (which one counts differs between servers)."""
    import asyncio

    sent = []

    async def app(scope, receive, send):  # reached only if the guard lets the request through
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"in"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    guarded = WebGuard(app, WebPolicy())
    scope = {"type": "http", "method": "GET", "path": "/", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:7860"), (b"host", b"evil.com")]}  # fmt: skip
    asyncio.run(guarded(scope, receive, send))
    assert sent[0]["status"] == 400 and b"more than one Host header" in sent[1]["body"]
    sent.clear()
    asyncio.run(guarded({**scope, "headers": scope["headers"][:1]}, receive, send))
    assert sent[0]["status"] == 200
    port, _ = server  # and through the live server: refused either way
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("GET", "/", skip_host=True)
        conn.putheader("Host", f"127.0.0.1:{port}")
        conn.putheader("Host", "evil.com")
        conn.endheaders()
        assert conn.getresponse().status == 400
    finally:
        conn.close()
