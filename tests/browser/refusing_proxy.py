"""A network that blocks WebSockets, for the browser tests: a TCP proxy in front of the
server that answers every WebSocket handshake with 403 and passes everything else on.

Run as ``python refusing_proxy.py <listen port> <server port>`` (a process of its own, so
the tests' gevent patching and Playwright's loop stay out of it).
"""

import asyncio
import sys

REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(client_reader, client_writer, server_port):
    try:
        head = await client_reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_writer.close()
        return
    if b"\r\nupgrade: websocket" in head.lower():
        client_writer.write(REFUSAL)
        await client_writer.drain()
        client_writer.close()
        return
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", server_port)
    server_writer.write(head)
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main(listen_port, server_port):
    server = await asyncio.start_server(lambda r, w: serve(r, w, server_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
