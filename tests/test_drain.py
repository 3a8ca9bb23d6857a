"""A drain reaches every socket, including one still in its handshake.

A socket joins its room's hub before flask-sock answers 101 (so nothing stored after
the client sees it open is missed), and gets its WebSocket only after. A drain in
between used to be dropped for it: it then served on until gunicorn's graceful timeout
cut it (1006) instead of closing with 1012. Driven here with the real parts in one
process: the app's Realtime and hub, simple-websocket's server handshake and our
WebSocket over a real socket pair, read by a raw client.
"""

import base64
import os
import socket
import struct

import simple_websocket

from webapp import chat
from webapp.sockets import SocketListener
from webapp.websocket import RESTARTING, CallerReads, NoEvent, WebSocket

from .sseclient import recv_within
from .support import using_db


def handshaken(sock):
    """simple-websocket's server side of an upgrade request on ``sock``, as gunicorn gives it."""
    environ = {
        "gunicorn.socket": sock,
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    return simple_websocket.Server(environ, thread_class=CallerReads, event_class=NoEvent)


def close_code(client):
    """The close code in the first frame after the 101 answer."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 4:
        chunk = recv_within(client, 5)
        assert chunk, f"the server sent no close frame: {data!r}"
        data += chunk
    head, _, frame = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frame[0] == 0x88, frame  # FIN + close
    return struct.unpack("!H", frame[2:4])[0]


def test_a_drain_during_the_handshake_closes_the_socket_with_1012(app):
    """Guarantee row (restart): every socket, even one mid-handshake, gets 1012."""
    realtime = app.extensions["chat.realtime"]
    with using_db(app):
        room = chat.RoomRef.of(chat.open_room("lobby"))
    listener = SocketListener("json")
    realtime.join(listener, room)  # before the 101, as _join_before_handshake does
    realtime.drain()  # the worker is told to stop now

    server_side, client = socket.socketpair()
    ws = WebSocket(handshaken(server_side), 65536, (512 * 1024, 10.0))
    listener.attach(ws)  # the handshake is done: what sockets._serve does next
    assert close_code(client) == RESTARTING
    realtime.leave(listener)
    client.close()
    ws.teardown()
