"""A TCP transfer checked by SHA-256, for tests that push data through a tunnel: run SINK in
the receiving namespace (``python3 -c SINK ADDRESS``: it prints "listening", then answers
"BYTES SHA256" for what it got) and SOURCE in the sending one (``python3 -c SOURCE ADDRESS
BYTES [SECONDS]``: random data, paced over SECONDS if given, then it prints
"BYTES SHA256 REPLY"). Port 5001."""

from __future__ import annotations

SINK = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

SOURCE = r"""
import hashlib, os, socket, sys, time
size = int(sys.argv[2])
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
data = os.urandom(size)
s = socket.create_connection((sys.argv[1], 5001), timeout=60)
chunk = 1 << 16
start = time.monotonic()
for i in range(0, size, chunk):
    s.sendall(data[i : i + chunk])
    ahead = (i / size) * seconds - (time.monotonic() - start)  # paced over SECONDS
    if ahead > 0:
        time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    reply += b
print(len(data), hashlib.sha256(data).hexdigest(), reply.decode())
"""
