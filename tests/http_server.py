"""A local HTTP file server for download tests (127.0.0.1 only): HTTP Range, and connections that
break in the middle of a file on purpose."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class ServedFiles:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> content
    cut_after: dict[str, list[int]] = field(default_factory=dict)  # path -> bytes to send before dropping, per request
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def start_file_server(served: ServedFiles):
    """``(base_url, stop)``: a threaded server on a free port of 127.0.0.1."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):  # noqa: N802 (http.server's naming)
            range_header = self.headers.get("Range")
            served.requests.append((self.path, range_header))
            body = served.files.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if range_header and served.honour_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            part = body[start:]
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cuts = served.cut_after.get(self.path)
            if cuts:
                self.wfile.write(part[: cuts.pop(0)])
                self.wfile.flush()
                self.close_connection = True  # the client sees the connection end mid-file
                return
            self.wfile.write(part)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop
