"""A misbehaving endpoint for failure tests: the real one cannot be made to break after N tokens."""

from __future__ import annotations

import json
import socket
import threading


class BrokenPeer:
    """Accepts one connection, sends two jsonlines tokens, then closes (``mode="drop"``) or waits
    until the client goes away (``mode="stall"``)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(65536)
            head, _, body = self.request.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            self.request = head + b"\r\n\r\n" + body
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/jsonlines\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for tok in ("Hanni", "bal"):
                line = (json.dumps({"index": 0, "token": tok}) + "\n").encode()
                conn.sendall(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            if self.mode == "stall":
                conn.recv(1)  # returns when the client closes the connection
        self.sock.close()

    def body(self) -> dict:
        return json.loads(self.request.partition(b"\r\n\r\n")[2])
