"""A scripted HTTP server on 127.0.0.1 for the faults a real vLLM cannot produce on demand."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers.opt.tokenizer import opt_tokenizer

MODEL = "opt-fake"


def chunk(index: int, token_ids: list[int], finish: str | None = None) -> bytes:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": MODEL,
            "choices": [{"index": index, "text": "x", "logprobs": None, "finish_reason": finish,
                         "token_ids": token_ids}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FakeServer:
    """`mode` picks the behaviour: 'ok', 'unauthorized', 'html', 'not-found', 'reject', 'die-mid-stream',
    'malformed', 'not-opt'. `seen` keeps every request's (path, Authorization header); `bodies` each POST's
    (path, JSON body)."""

    def __init__(self, mode: str = "ok"):
        self.mode, self.seen, self.bodies = mode, [], []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake.seen.append((self.path, self.headers.get("Authorization")))
                fake.answer_get(self)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.seen.append((self.path, self.headers.get("Authorization")))
                fake.bodies.append((self.path, body))
                fake.answer_post(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(handler, status: int, body: bytes, kind: str = "application/json") -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def answer_get(self, handler) -> None:
        if self.mode == "unauthorized":
            return self.send(handler, 401, b'{"error": {"message": "Unauthorized"}}')
        if self.mode == "html":
            return self.send(handler, 200, b"<html><body>My blog</body></html>", "text/html")
        if self.mode == "not-found":
            return self.send(handler, 404, b"<html>Not Found</html>", "text/html")
        listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 2048}]}
        self.send(handler, 200, json.dumps(listing).encode())

    def answer_post(self, handler, body: dict) -> None:
        if handler.path == "/tokenize":
            ids = [2, 9, 9, 9] if self.mode == "not-opt" else opt_tokenizer()(body["prompt"]).input_ids
            return self.send(handler, 200, json.dumps({"tokens": ids}).encode())
        if self.mode == "reject":
            message = "top_k must be -1 (disable), or at least 1, got 0."
            return self.send(handler, 400, json.dumps({"error": {"message": message, "type": "BadRequestError",
                                                                 "param": "top_k", "code": 400}}).encode())
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(chunk(0, [31414]) + chunk(0, [232]))
        handler.wfile.flush()
        if self.mode == "die-mid-stream":  # a chunked body cut off: the connection drops mid-answer
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.mode == "malformed":
            handler.wfile.write(b"data: {this is not json\n\n")
            return
        handler.wfile.write(chunk(0, [6], "length") + b"data: [DONE]\n\n")


def silent_server() -> tuple[socket.socket, str]:
    """A socket that accepts connections and never answers: (the socket, its URL)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
