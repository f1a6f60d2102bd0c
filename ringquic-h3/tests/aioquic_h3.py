#!/usr/bin/env python3
"""An independent HTTP/3 peer for ringquic-h3's tests, on aioquic's H3Connection API.

    aioquic_h3.py client https://HOST:PORT/PATH --ca CERT --out FILE [--timeout S]
        GET one URL; on 200 write the body to FILE and exit 0; otherwise print
        "error: ..." and exit 1 (the same contract as the example client).
    aioquic_h3.py server --listen HOST:PORT --cert CERT --key KEY --root DIR
        Serve the files under DIR (GET/HEAD; 404 otherwise, nothing outside DIR);
        print "listening on HOST:PORT" when ready (the same contract as the example server).

Written for aioquic 1.x (pinned in .ci/run); aioquic's own example programs are not
installed with the package.
"""

import argparse
import asyncio
import os
import sys
from urllib.parse import unquote, urlsplit

from aioquic.asyncio import serve
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated

CHUNK = 64 * 1024


# --- client -----------------------------------------------------------------------------------

class Client(QuicConnectionProtocol):
    """One GET at a time: headers and body of each request stream, a future for its end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.requests = {}  # stream id -> {"headers", "body", "done"}

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            for req in self.requests.values():
                if not req["done"].done():
                    req["done"].set_exception(
                        ConnectionError(f"connection closed: {event.error_code:#x} {event.reason_phrase}"))
        for ev in self.http.handle_event(event):
            req = self.requests.get(getattr(ev, "stream_id", None))
            if req is None:
                continue
            if isinstance(ev, HeadersReceived):
                req["headers"] = req["headers"] or dict(ev.headers)
            elif isinstance(ev, DataReceived):
                req["body"] += ev.data
            if getattr(ev, "stream_ended", False) and not req["done"].done():
                req["done"].set_result(None)

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        req = {"headers": None, "body": bytearray(), "done": asyncio.get_running_loop().create_future()}
        self.requests[stream_id] = req
        self.http.send_headers(stream_id, [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"aioquic-test"),
        ], end_stream=True)
        self.transmit()
        await req["done"]
        return int(req["headers"][b":status"]), bytes(req["body"])


async def run_client(args):
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise ValueError("the URL must be https://HOST:PORT/PATH")
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=url.hostname)
    config.load_verify_locations(args.ca)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    async with connect(url.hostname, url.port or 443, configuration=config,
                       create_protocol=Client, wait_connected=True) as client:
        status, body = await client.get(url.netloc, path)
        client.close(error_code=0x100)  # H3_NO_ERROR
    if status != 200:
        raise RuntimeError(f"the server answered {status}")
    with open(args.out, "wb") as f:
        f.write(body)
    print(f"200 OK: {len(body)} bytes", file=sys.stderr)


# --- server -----------------------------------------------------------------------------------

def resolve(root, path):
    """The file under root (a real path) that the request path names, or None."""
    out = root
    for segment in path.split("?", 1)[0].split("/"):
        if not segment:
            continue
        name = unquote(segment, errors="strict")
        if name in (".", "..") or any(c in name for c in "/\\\0"):
            return None
        out = os.path.join(out, name)
    if os.path.isdir(out):
        out = os.path.join(out, "index.html")
    real = os.path.realpath(out)
    if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
        return None
    return real


class Server(QuicConnectionProtocol):
    root = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.http = H3Connection(self._quic)
        if self.http is None:
            return
        for ev in self.http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.answer(ev.stream_id, dict(ev.headers))

    def answer(self, stream_id, headers):
        method = headers.get(b":method", b"")
        path = headers.get(b":path", b"/").decode(errors="replace")
        file = resolve(self.root, path) if method in (b"GET", b"HEAD") else None
        if file is None:
            body = b"not found\n"
            self.http.send_headers(stream_id, [(b":status", b"404"),
                                               (b"content-length", str(len(body)).encode())])
            self.http.send_data(stream_id, body if method != b"HEAD" else b"", end_stream=True)
        else:
            with open(file, "rb") as f:
                body = f.read()
            self.http.send_headers(stream_id, [(b":status", b"200"),
                                               (b"content-length", str(len(body)).encode())])
            if method == b"HEAD" or not body:
                self.http.send_data(stream_id, b"", end_stream=True)
            else:
                for at in range(0, len(body), CHUNK):
                    last = at + CHUNK >= len(body)
                    self.http.send_data(stream_id, body[at:at + CHUNK], end_stream=last)
        self.transmit()


async def run_server(args):
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    Server.root = os.path.realpath(args.root)
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(args.cert, args.key)
    server = await serve(host, int(port), configuration=config, create_protocol=Server)
    bound = server._transport.get_extra_info("sockname")
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await asyncio.Event().wait()  # until killed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("--ca", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--root", required=True)
    args = p.parse_args()
    try:
        if args.mode == "client":
            asyncio.run(asyncio.wait_for(run_client(args), args.timeout))
        else:
            asyncio.run(run_server(args))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # one clear line, as the example client prints
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
