"""``tledge camera --serve [HOST:]PORT``: the live classifier in a browser.

Most Pis run headless over SSH, and pip's OpenCV (opencv-python-headless) cannot open a window,
so the camera's page is served over HTTP with the standard library's threading server:

    /             a page: the annotated stream, the top-k of each model, FPS, per-stage latency,
                  and with --compare both models' labels and their running agreement
    /stream.mjpg  the annotated stream, multipart/x-mixed-replace JPEGs (what an <img> shows)
    /frame.jpg    one JPEG encoded after the request arrived (header X-Tledge-Frame: its number)
    /stats.json   the page's figures, for scripts
    /healthz      {"status": "ok", ...}

Serving never slows inference: the sink thread hands each annotated frame to a one-slot
mailbox and returns; one encoder thread turns the newest frame into a JPEG, only while someone
watches and at most --serve-fps times a second (15: smooth to watch, and the CPU stays on
inference); each client thread sends the newest JPEG when it is ready for one, so a slow or
stalled client loses frames, never the pipeline, and one that takes no frame for
``SEND_TIMEOUT_S`` is dropped, so stalled viewers cannot hold every stream slot. At most
``max_clients`` streams at once. Bound to 127.0.0.1 unless a host is given; with --serve-token
every URL must carry ?token=SECRET (URL-encoded in every link tledge prints or serves).
"""

from __future__ import annotations

import errno
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, quote, urlparse

import numpy as np

from tledge.camera.outputs import Latest, Output
from tledge.core.errors import TledgeError

JPEG_QUALITY = 75
MAX_WIDTH = 640  # the stream's width: enough to read the overlay, cheap to encode on a Pi
STREAM_FPS = 15.0  # JPEGs a second at most: smooth to watch, and the CPU stays on inference
BOUNDARY = "tledgeframe"
SEND_TIMEOUT_S = 5.0  # a viewer that takes no frame for this long is dropped
SNAPSHOT_WAIT_S = 2.0  # /frame.jpg waits at most this long for a frame newer than the request
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_serve(spec: str) -> tuple[str, int]:
    """"8080" -> ("127.0.0.1", 8080); "0.0.0.0:8080"; "[::1]:8080"."""
    spec = str(spec).strip()
    host, port = "127.0.0.1", spec
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]:")
    elif ":" in spec:
        host, _, port = spec.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or not host:
        raise TledgeError(f"--serve {spec!r} is not [HOST:]PORT: pass e.g. --serve 8080 or "
                          "--serve 0.0.0.0:8080")
    return host, number


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tledge camera</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{margin:0;font:15px system-ui,sans-serif;background:#111;color:#eee;display:flex;
      flex-wrap:wrap;gap:16px;padding:16px}
 #view{flex:1 1 640px;max-width:960px} #view img{width:100%;background:#222;border-radius:6px}
 #side{flex:0 1 320px} h1{font-size:18px;margin:0 0 8px} h2{font-size:15px;margin:14px 0 4px}
 table{border-collapse:collapse;width:100%} td{padding:2px 6px} td.n{text-align:right;
      font-variant-numeric:tabular-nums} .bar{background:#2a7;height:6px;border-radius:3px}
 .m1 h2{color:#7f7} .m2 h2{color:#5cf} .dim{color:#999} #agree{font-size:20px}
</style></head><body>
<div id="view"><img id="stream" alt="live stream" src="stream.mjpg__TOKEN__"></div>
<div id="side"><h1>tledge camera</h1><div class="dim" id="source"></div>
<div id="models"></div><h2>agreement</h2><div id="agree" class="dim">-</div>
<h2>latency p50 (ms)</h2><table id="stages"></table>
<div class="dim" id="fps"></div></div>
<script>
const q = "__TOKEN__";
function esc(s){return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",
  '"':"&quot;"}[c]));}
async function tick(){
  try{
    const r = await fetch("stats.json" + q, {cache: "no-store"}); const s = await r.json();
    document.getElementById("source").textContent = s.source;
    document.getElementById("fps").textContent = s.fps.toFixed(1) + " FPS, frame " + s.frame +
      ", " + s.clients + " viewer(s)";
    document.getElementById("models").innerHTML = s.models.map((m, i) =>
      `<div class="m${i+1}"><h2>${esc(m.name)} <span class="dim">${m.latency_ms.toFixed(1)} ms`+
      `</span></h2><table>` + m.top_k.map(([label, p]) => `<tr><td>${esc(label)}</td>` +
      `<td class="n">${p.toFixed(2)}</td><td style="width:40%"><div class="bar" ` +
      `style="width:${(100*p).toFixed(0)}%"></div></td></tr>`).join("") + `</table></div>`
    ).join("");
    document.getElementById("agree").textContent = s.agreement === null ? "-" :
      (100 * s.agreement).toFixed(1) + "% of " + s.compared + " frames";
    document.getElementById("stages").innerHTML = Object.entries(s.stages).map(([k, v]) =>
      `<tr><td>${esc(k)}</td><td class="n">${v.toFixed(2)}</td></tr>`).join("");
  }catch(e){}
  setTimeout(tick, 500);
}
tick();
</script></body></html>
"""


class FrameServer:
    """The HTTP side: latest JPEG and figures in, pages and streams out.

    Attributes:
      host, port: where it listens (port 0 picks a free one; ``port`` then says which).
      token: the secret every URL must carry, or None.
      max_clients: streams served at once; more get 503.
    """

    def __init__(self, host: str, port: int, token: Optional[str] = None,
                 max_clients: int = 4):
        self.host, self.token, self.max_clients = host, token, max_clients
        self.cond = threading.Condition()
        self.jpeg: Optional[bytes] = None
        self.jpeg_frame = None  # the number of the frame in ``jpeg``
        self.seq = 0       # JPEGs published: what the stream's clients wait on
        self.frames = 0    # frames whose figures were published
        self.stats: dict = {"status": "starting"}
        self.clients = 0
        self.last_snapshot = 0.0  # when /frame.jpg was last asked for
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # the camera's own status line says enough
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                server.handle(self)

            def do_POST(self):  # noqa: N802
                server.handle_post(self)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise TledgeError(f"port {port} on {host} is in use: pick another, e.g. "
                                  f"--serve {port + 1}") from e
            raise TledgeError(f"cannot serve on {host}:{port} ({e.strerror or e}): pass "
                              "another --serve address") from e
        self.httpd.daemon_threads = True
        # A viewer that goes away mid-request is normal: no traceback on the camera's stderr.
        self.httpd.handle_error = lambda request, address: None
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="serve",
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "localhost"
        return f"http://{host}:{self.port}/" + self.query

    @property
    def query(self) -> str:
        """``?token=...`` with the token URL-encoded (safe in HTML and JavaScript too), or ""."""
        return f"?token={quote(self.token, safe='')}" if self.token else ""

    def publish(self, jpeg: Optional[bytes], stats: dict) -> None:
        """New figures, and a new JPEG for the stream when ``jpeg`` is given."""
        with self.cond:
            self.stats = stats
            self.frames += 1
            if jpeg is not None:
                self.jpeg = jpeg
                self.jpeg_frame = stats.get("frame")
                self.seq += 1
                self.cond.notify_all()

    def close(self) -> None:
        self.closing.set()
        with self.cond:
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ requests

    def _allowed(self, request) -> bool:
        if not self.token:
            return True
        query = parse_qs(urlparse(request.path).query)
        given = (query.get("token") or [request.headers.get("X-Tledge-Token", "")])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def handle(self, request) -> None:
        path = urlparse(request.path).path
        if path == "/healthz":
            return self._send(request, 200, "application/json", json.dumps(
                {"status": "ok" if not self.closing.is_set() else "closing",
                 "frames": self.frames, "jpegs": self.seq, "clients": self.clients}).encode())
        if not self._allowed(request):
            return self._send(request, 403, "text/plain",
                              b"forbidden: add ?token=... (tledge camera --serve-token)\n")
        if path in ("/", "/index.html"):
            return self._send(request, 200, "text/html; charset=utf-8",
                              PAGE.replace("__TOKEN__", self.query).encode())
        if path == "/stats.json":
            with self.cond:
                stats = dict(self.stats, clients=self.clients)
            return self._send(request, 200, "application/json", json.dumps(stats).encode())
        if path == "/frame.jpg":
            # a frame encoded after this request arrived: the encoder rests while nobody
            # watches, and the JPEG it kept may be minutes old
            self.last_snapshot = time.monotonic()
            with self.cond:
                asked = self.seq
                self.cond.wait_for(lambda: self.seq > asked or self.closing.is_set(),
                                   timeout=SNAPSHOT_WAIT_S if self.jpeg is not None else 5)
                jpeg, frame = self.jpeg, self.jpeg_frame
            if jpeg is None:
                return self._send(request, 503, "text/plain", b"no frame yet\n")
            return self._send(request, 200, "image/jpeg", jpeg,
                              {"X-Tledge-Frame": str(frame)})
        if path == "/stream.mjpg":
            return self._stream(request)
        return self._send(request, 404, "text/plain", b"not found: try / or /stats.json\n")

    def handle_post(self, request) -> None:
        """The camera's page takes no POST (``tledge collect``'s does)."""
        request.rfile.read(min(int(request.headers.get("Content-Length") or 0), 65536))
        return self._send(request, 405, "text/plain", b"the camera page takes GET only\n")

    def _send(self, request, code: int, kind: str, body: bytes,
              headers: Optional[dict] = None) -> None:
        try:
            request.send_response(code)
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            request.send_header("Content-Type", kind)
            request.send_header("Content-Length", str(len(body)))
            request.send_header("Cache-Control", "no-store")
            request.end_headers()
            request.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, request) -> None:
        with self.cond:
            if self.clients >= self.max_clients:
                full = True
            else:
                full = False
                self.clients += 1
        if full:
            return self._send(request, 503, "text/plain",
                              f"{self.max_clients} viewers already: try later\n".encode())
        try:
            # a viewer whose socket takes nothing for SEND_TIMEOUT_S (it stopped reading) gets
            # a timeout on its next write, and its slot back
            request.connection.settimeout(SEND_TIMEOUT_S)
            request.send_response(200)
            request.send_header("Content-Type",
                                f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            request.send_header("Cache-Control", "no-store")
            request.send_header("Connection", "close")
            request.end_headers()
            seen = -1
            while not self.closing.is_set():
                with self.cond:
                    # the newest frame, whenever this client is ready for one: a slow client
                    # skips frames, and nobody waits for it
                    if self.seq == seen or self.jpeg is None:
                        self.cond.wait(timeout=1.0)
                    if self.seq == seen or self.jpeg is None or self.closing.is_set():
                        continue
                    seen, jpeg = self.seq, self.jpeg
                request.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                request.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the viewer left
        finally:
            with self.cond:
                self.clients -= 1
            request.close_connection = True


def stream_jpeg(bgr: np.ndarray) -> Optional[bytes]:
    """A frame as the page's stream shows it: MAX_WIDTH wide at most, JPEG at JPEG_QUALITY;
    None when OpenCV cannot encode it."""
    import cv2

    h, w = bgr.shape[:2]
    if w > MAX_WIDTH:
        bgr = cv2.resize(bgr, (MAX_WIDTH, h * MAX_WIDTH // w), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else None


class ServeOutput(Output):
    """The camera output that feeds a FrameServer: encodes the newest annotated frame to JPEG
    in a thread of its own, while anyone watches."""

    annotated = full_frames = live_view = True

    def __init__(self, spec: str, token: Optional[str] = None, fps: float = STREAM_FPS):
        self.host, self.port = parse_serve(spec)
        self.token = token
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.last_encode = 0.0
        self.mailbox = Latest()
        self.shown = None  # the packet whose JPEG the viewers see
        self.server: Optional[FrameServer] = None

    def start(self, run):
        super().start(run)
        self.server = FrameServer(self.host, self.port, self.token)
        loopback = self.host in LOOPBACK
        run.echo(f"serving the live page on {self.server.url}"
                 + ("  (from a laptop: ssh -L "
                    f"{self.server.port}:localhost:{self.server.port} PI, then open "
                    f"http://localhost:{self.server.port}/)" if loopback else ""))
        if not loopback:
            run.echo(f"WARNING: --serve {self.host} is reachable from other machines"
                     + ("" if self.token else ": anyone who can reach it sees the camera; "
                        "add --serve-token SECRET, or serve on 127.0.0.1 over ssh -L"))
        self.encoder = threading.Thread(target=self._encode, name="jpeg", daemon=True)
        self.encoder.start()

    def frame(self, packet, annotated):
        self.mailbox.put((packet, annotated))  # never blocks: a newer frame replaces it

    def _encode(self) -> None:

        while not self.server.closing.is_set():
            item = self.mailbox.get(0.5)
            if item is None or item is _STOP:
                if item is _STOP:
                    return
                continue
            packet, annotated = item
            idle = self.server.clients == 0 and \
                time.monotonic() - self.server.last_snapshot > 2.0
            too_soon = time.monotonic() - self.last_encode < self.interval
            if (idle or too_soon) and self.server.jpeg is not None:
                # figures only; while someone watches, the labels stay those of the frame on
                # their screen, the rates and latencies are the newest
                shown = None if idle else self.shown
                self.server.publish(None, self._stats(packet, shown))
                continue
            self.last_encode = time.monotonic()
            self.shown = packet
            t0 = time.perf_counter()
            jpeg = stream_jpeg(annotated)
            ms = 1000 * (time.perf_counter() - t0)
            if jpeg is not None:
                self.run.timings["jpeg"].append(ms)
                self.server.publish(jpeg, self._stats(packet))

    def _stats(self, packet, shown=None) -> dict:
        """The page's figures: labels of ``shown`` (the frame on the viewers' screens) or of
        ``packet``; rates and latencies of the newest frames."""
        run = self.run
        fps = run.rate.fps() or 0.0
        stages = {}
        for stage, ms in list(run.timings.items()):
            recent = ms[-100:]
            if recent:
                stages[stage] = float(np.median(recent))
        labelled = shown or packet
        models = []
        for i, (model, result) in enumerate(zip(run.models, labelled.results)):
            models.append({"name": model.name,
                           "latency_ms": labelled.times.get("inference" if i == 0 else
                                                            "compare", 0.0),
                           "top_k": [[c.label, round(c.score, 4)] for c in result]})
        n = run.agreement["n"]
        return {"status": "ok", "source": run.source.description, "frame": labelled.index,
                "fps": fps, "models": models, "stages": stages,
                "agreement": run.agreement["agree"] / n if n else None, "compared": n,
                "jpeg": {"quality": JPEG_QUALITY, "max_width": MAX_WIDTH,
                         "max_fps": 1.0 / self.interval if self.interval else None}}

    def close(self, frames):
        if self.server is None:
            return
        self.mailbox.put(_STOP)
        self.server.close()
        self.encoder.join(timeout=2)


_STOP = object()
