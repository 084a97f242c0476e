"""The live view's server against unlucky and hostile viewers, without a camera: figures and
JPEGs are published by hand. No TensorFlow."""

import http.client
import socket
import struct
import threading
import time
import urllib.request

import pytest

from tledge.camera import serve
from tledge.camera.serve import FrameServer


@pytest.fixture
def server():
    servers = []

    def make(**kwargs):
        s = FrameServer("127.0.0.1", 0, **kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _get(s, path, token=None):
    url = f"http://127.0.0.1:{s.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_a_token_with_url_characters_works_in_every_link(server):
    token = "a+b&c=d/e?f#g h"
    s = server(token=token)
    assert "token=a%2Bb%26c%3Dd%2Fe%3Ff%23g%20h" in s.url
    status, _, page = _get(s, "/" + s.url.split("/", 3)[3])
    assert status == 200
    assert f"stats.json{s.query}" not in page.decode()  # the page builds it from q
    assert f'src="stream.mjpg{s.query}"' in page.decode() and f'const q = "{s.query}"' in \
        page.decode()
    s.publish(None, {"status": "ok", "frame": 1})
    assert _get(s, "/stats.json" + s.query)[0] == 200
    with pytest.raises(urllib.error.HTTPError, match="403"):
        _get(s, "/stats.json?token=a+b&c=d")  # unencoded: the + is a space, & splits it


def test_frame_jpg_is_encoded_after_the_request(server):
    s = server()
    s.publish(b"\xff\xd8old\xff\xd9", {"frame": 1})
    later = threading.Timer(0.3, lambda: s.publish(b"\xff\xd8new\xff\xd9", {"frame": 1000}))
    later.start()
    status, headers, body = _get(s, "/frame.jpg")
    assert status == 200 and body == b"\xff\xd8new\xff\xd9" and headers["X-Tledge-Frame"] == \
        "1000"


def test_stalled_viewers_are_dropped_and_free_their_slots(server, monkeypatch):
    monkeypatch.setattr(serve, "SEND_TIMEOUT_S", 1.0)
    s = server(max_clients=4)
    stalled = []
    for _ in range(4):  # connect, ask for the stream, never read
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(sock)
    deadline = time.time() + 5
    while s.clients < 4 and time.time() < deadline:
        s.publish(b"\xff\xd8" + bytes(300_000) + b"\xff\xd9", {"frame": 0})
        time.sleep(0.05)
    assert s.clients == 4
    deadline = time.time() + 15  # buffers fill, writes time out, slots come back
    while s.clients and time.time() < deadline:
        s.publish(b"\xff\xd8" + bytes(300_000) + b"\xff\xd9", {"frame": 0})
        time.sleep(0.1)
    assert s.clients == 0, "stalled viewers still hold the slots"
    connection = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    connection.request("GET", "/stream.mjpg")
    assert connection.getresponse().status == 200
    connection.close()
    for sock in stalled:
        sock.close()


def test_a_viewer_resetting_its_connection_prints_nothing(server, capfd):
    s = server()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /stats.json HTTP/1.1\r\nHo")  # half a request, then a reset
        sock.close()
    time.sleep(0.5)
    assert _get(s, "/healthz")[0] == 200
    assert "Traceback" not in capfd.readouterr().err
