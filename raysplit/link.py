"""A direct link between two party hosts for the calls of a run of training steps.

A Ray actor call costs a round trip through Ray's scheduler and, for an activation over 100 KB, the object
store: ~6 ms per synchronous call on a 2-core machine (benchmarks/README.md), a third of a small split
step. A link is a TCP connection from the host that drives the steps (the initiator) to a peer host, held
for a run of turns: the peer's actor thread sits in ``serve`` (one Ray call), executing the initiator's
calls in order, so nothing else runs on the peer meanwhile, exactly as with one Ray call per step. Messages
are pickled with protocol 5, numpy arrays out of band (no copy into the pickle). What crosses is what the
ledger recorded (Parcels of wire arrays): the accounting does not depend on the transport.

Calls are asynchronous (``submit`` returns a ``Pending``) so that an initiator can keep two peers busy at
once (vertical data holders), as it could with ObjectRefs. A peer that cannot connect (a cluster that
blocks the port) leaves the initiator on Ray calls; a peer that dies mid-run closes the socket, and the
initiator's call raises ``LinkBroken``, which the run's recovery treats as any lost party.
"""
from __future__ import annotations

import pickle
import secrets
import socket
import struct
import traceback
from collections import deque
from typing import Any

import ray

HEADER = struct.Struct("!QI")     # pickle length, number of out-of-band buffers
LENGTH = struct.Struct("!Q")
ACCEPT_POLL_S = 0.2
HANDSHAKE_S = 5
CONNECT_TIMEOUT_S = 5


class LinkBroken(ConnectionError):
    """The other end of a link went away mid-call."""


def _send(sock: socket.socket, obj: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    sock.sendall(HEADER.pack(len(body), len(raws)) + b"".join(LENGTH.pack(r.nbytes) for r in raws) + body)
    for r in raws:
        sock.sendall(r)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise LinkBroken("the other end closed the link")
        got += k
    return buf


def _recv(sock: socket.socket) -> Any:
    n_body, n_bufs = HEADER.unpack(_recv_exact(sock, HEADER.size))
    lengths = [LENGTH.unpack(_recv_exact(sock, LENGTH.size))[0] for _ in range(n_bufs)]
    body = _recv_exact(sock, n_body)
    return pickle.loads(body, buffers=[_recv_exact(sock, n) for n in lengths])


def _hello(sock: socket.socket, token: bytes, size: int) -> bytes | None:
    """What an accepted connection says it is (``size`` bytes after the token), the socket made ready for
    messages; None if it does not say at once or its token is wrong."""
    try:
        sock.settimeout(HANDSHAKE_S)
        hello = _recv_exact(sock, 16 + size)
    except (OSError, LinkBroken):
        return None
    if not secrets.compare_digest(bytes(hello[:16]), token):
        return None
    sock.settimeout(None)
    _tune(sock)
    return bytes(hello[16:])


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class Pending:
    """The reply of a link call, read when first asked for (``value()`` waits for it); ``part`` picks one of
    several returns."""

    def __init__(self, reply: "_Reply", part: int | None = None):
        self.reply, self.part = reply, part

    def value(self) -> Any:
        out = self.reply.get()
        return out if self.part is None else out[self.part]


def resolve(value: Any) -> Any:
    return value.value() if isinstance(value, Pending) else value


def opened(reply: Any) -> Any:
    """The value of a peer call's reply, whichever way it travelled: over a link (a Pending) or by Ray (an ObjectRef)."""
    return ray.get(reply) if isinstance(reply, ray.ObjectRef) else resolve(reply)


class _Reply:
    def __init__(self, link: "Link"):
        self.link, self.done, self.ok, self.value, self.where = link, False, False, None, ""

    def get(self) -> Any:
        while not self.done:
            self.link.read_one()
        if not self.ok:
            raise self.value
        return self.value


class Link:
    """The initiator's end: calls ``host.call(key, method, *args)`` on the peer, in order."""

    def __init__(self, name: str, sock: socket.socket, serving: ray.ObjectRef):
        self.name, self.sock, self.serving = name, sock, serving
        self.unread: deque[_Reply] = deque()      # replies come back in the order of the calls

    def submit(self, key: str, method: str, num_returns: int, *args):
        """Send a call; its reply as a ``Pending`` (or a tuple of them for ``num_returns`` > 1)."""
        args = tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else resolve(a) for a in args)
        _send(self.sock, (key, method, args))
        reply = _Reply(self)
        self.unread.append(reply)
        return Pending(reply) if num_returns == 1 else tuple(Pending(reply, i) for i in range(num_returns))

    def read_one(self) -> None:
        try:
            ok, value, where = _recv(self.sock)
        except (OSError, EOFError) as e:
            raise LinkBroken(f"link to {self.name} broken: {e}") from None
        reply = self.unread.popleft()
        if not ok:
            value.add_note(f"raised on {self.name}:\n{where}")
        reply.ok, reply.value, reply.done = ok, value, True

    def close(self) -> None:
        """End the peer's session (after reading every reply) and wait for its ``serve`` call to return."""
        try:
            while self.unread:
                self.read_one()
            _send(self.sock, None)
        finally:
            self.sock.close()
        ray.get(self.serving)


def open_links(peers: dict[str, Any]) -> dict[str, Link]:
    """Links from this host to the peer hosts {name: actor handle}; a peer that cannot connect is left out
    (its calls stay Ray calls)."""
    if not peers:
        return {}
    listener = socket.create_server((ray.util.get_node_ip_address(), 0), backlog=len(peers))
    listener.settimeout(ACCEPT_POLL_S)
    token = secrets.token_bytes(16)
    address = listener.getsockname()[:2]
    serving = {name: h.serve.remote(name, address, token) for name, h in peers.items()}
    links: dict[str, Link] = {}
    waiting = dict(serving)
    try:
        while waiting:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                # a peer that returned without connecting could not reach us: it stays on Ray calls
                done, _ = ray.wait(list(waiting.values()), num_returns=len(waiting), timeout=0)
                for ref in done:
                    name = next(n for n, r in waiting.items() if r == ref)
                    ray.get(ref)            # raises if the peer died
                    del waiting[name]
                continue
            who = _hello(sock, token, 64)
            peer = None if who is None else who.rstrip(b"\0").decode(errors="replace")
            if peer not in waiting:
                sock.close()
                continue
            links[peer] = Link(peer, sock, waiting.pop(peer))
    except BaseException:
        close_links(links)
        raise
    finally:
        listener.close()
    return links


def close_links(links: dict[str, Link], quiet: bool = False) -> None:
    """Close every link; raise the first failure unless ``quiet``."""
    errors = []
    for link in links.values():
        try:
            link.close()
        except Exception as e:
            errors.append(e)
    if errors and not quiet:
        raise errors[0]


def serve(host, name: str, address: tuple, token: bytes) -> bool:
    """The peer's end, in its actor thread: connect to the initiator and run its calls until it says stop.
    False if the initiator cannot be reached (it goes on with Ray calls)."""
    try:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return False
    sock.settimeout(None)
    _tune(sock)
    with sock:
        sock.sendall(token + name.encode().ljust(64, b"\0"))
        while True:
            try:
                msg = _recv(sock)
            except (OSError, EOFError):
                return True         # the initiator went away: its own failure is reported by its caller
            if msg is None:
                return True
            key, method, args = msg
            try:
                reply = (True, host.call(key, method, *args), "")
            except Exception as e:
                reply = (False, e, traceback.format_exc())
            try:
                _send(sock, reply)
            except (pickle.PicklingError, TypeError, AttributeError):
                _send(sock, (False, RuntimeError(repr(reply[1])), reply[2]))
            except OSError:
                return True


class Mesh:
    """Sockets between the worker hosts, held for their lives, for sequential rounds over links: each run of
    turns takes its hand-off from the host of the run before and sends its own to the host of the run after,
    so the driver makes one call per host per round instead of one per run, and no hand-off waits for it.
    Hosts are numbered by their place in the driver's list of addresses."""

    def __init__(self):
        self.listener = socket.create_server((ray.util.get_node_ip_address(), 0))
        self.token = secrets.token_bytes(16)
        self.to: dict[int, socket.socket] = {}      # host -> the socket this host sends on
        self.frm: dict[int, socket.socket] = {}     # host -> the socket this host receives on

    @property
    def address(self) -> tuple:
        return (*self.listener.getsockname()[:2], self.token)

    def join(self, me: int, addresses: list[tuple]) -> bool:
        """Connect to every other host and accept their connections; False if one cannot be reached (the
        driver then goes on with a call per run)."""
        self.close()
        try:
            for j, (ip, port, token) in enumerate(addresses):
                if j != me:
                    sock = socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT_S)
                    sock.sendall(token + LENGTH.pack(me))
                    self.to[j] = sock
        except OSError:
            return False
        self.listener.settimeout(HANDSHAKE_S)
        while len(self.frm) < len(addresses) - 1:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return False
            who = _hello(sock, self.token, LENGTH.size)
            if who is None:
                sock.close()
                continue
            self.frm[LENGTH.unpack(who)[0]] = sock
        for sock in self.to.values():
            sock.settimeout(None)
            _tune(sock)
        return True

    def send(self, host: int, obj: Any) -> None:
        try:
            _send(self.to[host], obj)
        except OSError as e:
            raise LinkBroken(f"hand-off to worker host {host} failed: {e}") from None

    def recv(self, host: int) -> Any:
        try:
            return _recv(self.frm[host])
        except (OSError, EOFError) as e:
            raise LinkBroken(f"hand-off from worker host {host} lost: {e}") from None

    def close(self) -> None:
        for sock in [*self.to.values(), *self.frm.values()]:
            sock.close()
        self.to, self.frm = {}, {}
