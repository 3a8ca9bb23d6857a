"""A proxy in front of a server that refuses WebSocket upgrades (403) while a flag file
exists, as a corporate proxy would, and passes everything else through.

    python blocking_proxy.py <listen port> <server port> <flag file>

Run as its own process: the browser tests' process is busy driving Chromium.
"""

import os
import socket
import socketserver
import sys
import threading


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(65536)
            if not data:
                return
            head += data
        if os.path.exists(FLAG) and b"upgrade: websocket" in head.lower():
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        upstream = socket.create_connection(("127.0.0.1", SERVER_PORT))
        upstream.sendall(head)
        back = threading.Thread(target=relay, args=(upstream, self.request), daemon=True)
        back.start()
        relay(self.request, upstream)
        back.join()


def relay(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    PORT, SERVER_PORT, FLAG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with Server(("127.0.0.1", PORT), Handler) as server:
        server.serve_forever()
