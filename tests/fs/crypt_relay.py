"""A relay process between two heapfs partner links (tests/fs/test_replica_crypt.py): it
listens on 127.0.0.1:PORT and connects each connection it accepts to 127.0.0.1:TARGET,
passing bytes both ways, reading the link's frames (replica/replica_i.h: a 32-byte header,
len payload bytes, a 16-byte tag when flags has SEALED) so it can misbehave at one frame:

  flip     the first sealed MSG frame of 4 KiB or more from the connecting side gets one
           bit flipped in its payload (its header left as is)
  drop     that frame is not passed on
  replay   that frame is passed on, then the one before it again
  record   passes everything; writes what the connecting side sent before its first
           sealed frame (HELLO, AUTH) to RECORD.init and what the other side sent to
           RECORD.acc
  fake     answers a connection itself with RECORD.acc (a recorded acceptor), reads what
           comes, never connects on
  splice   connects on, but gives each side a HELLO with another nonce than the other
           sent (two handshakes spliced at the relay), fixing the header's checksum;
           every connection
  pass     passes everything

flip, drop and replay happen once; record on the first connection; later ones are passed as they are
(the pair resyncs through it).  Each event is printed on stdout, one line, flushed.
Usage: crypt_relay.py PORT TARGET MODE [RECORD]
"""
import ctypes
import os
import socket
import struct
import sys
import threading

HDR = 32
SEALED = 1
K_HELLO, K_AUTH, K_MSG = 1, 2, 3
xxh = ctypes.CDLL("libxxhash.so.0")
xxh.XXH3_64bits.restype = ctypes.c_uint64
xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def say(*a):
    print(*a, flush=True)


def read_frame(s):
    """(header bytes, payload+tag bytes) or None at the end."""
    h = recv_all(s, HDR)
    if h is None:
        return None
    flags, = struct.unpack_from("<H", h, 6)
    ln, = struct.unpack_from("<I", h, 12)
    body = recv_all(s, ln + (16 if flags & SEALED else 0))
    return None if body is None else (h, body)


def recv_all(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            return None
        b += d
    return b


def shut(*socks):
    for x in socks:
        try:
            x.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def plain(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    shut(a, b)


def renonce(h, body):
    """The HELLO with another nonce (offset 24 of the payload), its checksum made right."""
    body = body[:24] + os.urandom(32) + body[56:]
    h = h[:24] + struct.pack("<Q", xxh.XXH3_64bits(body, len(body)))
    return h, body


MISBEHAVED = threading.Event()  # flip, drop, replay: once


def forward(a, b, mode, first, rec):
    """Frames from a to b, misbehaving as mode says (first: the first connection that
    reached the target)."""
    prev = None
    try:
        while True:
            f = read_frame(a)
            if f is None:
                break
            h, body = f
            kind = h[5]
            flags, = struct.unpack_from("<H", h, 6)
            if rec is not None and not flags & SEALED:
                rec.append(h + body)
            if mode == "splice" and kind == K_HELLO:
                h, body = renonce(h, body)
                say("spliced a hello")
            if (not MISBEHAVED.is_set() and mode in ("flip", "drop", "replay") and
                    kind == K_MSG and flags & SEALED and len(body) >= 4096):
                MISBEHAVED.set()
                if mode == "flip":
                    body = body[:100] + bytes([body[100] ^ 4]) + body[101:]
                    b.sendall(h + body)
                elif mode == "replay":
                    b.sendall(h + body)
                    if prev:
                        b.sendall(prev)
                say(mode, "a frame of", len(body), "bytes")
                prev = h + body
                if mode == "drop":
                    continue
                continue
            b.sendall(h + body)
            prev = h + body
    except OSError:
        pass
    shut(a, b)


def main():
    port, target, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    record = sys.argv[4] if len(sys.argv) > 4 else None
    srv = socket.create_server(("127.0.0.1", port))
    say("listening")
    n = 0
    while True:
        c, _ = srv.accept()
        n += 1
        if mode == "fake":
            with open(record + ".acc", "rb") as f:
                c.sendall(f.read())
            say("answered with a recorded handshake")
            threading.Thread(target=plain, args=(c, c), daemon=True).start()
            continue
        try:
            t = socket.create_connection(("127.0.0.1", target), timeout=2)
            t.settimeout(None)
        except OSError:
            c.close()
            n -= 1  # (the target was not there yet: not a connection)
            continue
        ri, ra = ([], []) if mode == "record" and n == 1 else (None, None)
        th = [threading.Thread(target=forward, args=(c, t, mode, n == 1, ri), daemon=True),
              threading.Thread(target=forward, args=(t, c, mode if mode == "splice" else "",
                                                     n == 1, ra), daemon=True)]
        for x in th:
            x.start()
        if ri is not None:
            # the handshake is two frames each way: written once they came
            def dump(ri=ri, ra=ra):
                import time
                for _ in range(100):
                    if len(ri) >= 2 and len(ra) >= 2:
                        break
                    time.sleep(0.05)
                with open(record + ".init", "wb") as f:
                    f.write(b"".join(ri[:2]))
                with open(record + ".acc", "wb") as f:
                    f.write(b"".join(ra[:2]))
                say("recorded the handshake")
            threading.Thread(target=dump, daemon=True).start()


if __name__ == "__main__":
    main()
