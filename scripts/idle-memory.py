# Memory of idle keep-alive connections: opens N connections to a proxy 1,000 at a time (the
# bench's tenants in rotation), one GET each, then holds them idle, and prints the proxy's RSS
# and its growth per connection after each step (from /proc/<pid>/status). The figure in
# BENCHMARKS.md is the growth from 2,000 to 6,000 connections divided by 4,000.
#   python3 scripts/idle-memory.py PORT PROXY_PID N
# Needs the bench data of one ../shared/bench/run.sh run; see BENCHMARKS.md for the gateway's
# command line. A first measuring tool for issue 19, not yet its side-by-side script.
import asyncio, sys, os
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def req(i):
    t = f"{i % 1000 + 1:06d}"
    return (f"GET /api/messages HTTP/1.1\r\nHost: gw\r\nX-Tenant-ID: tnt_{t}\r\n"
            f"Origin: https://app.tnt-{t}.example\r\n\r\n").encode()
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
async def one(conns, i):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(req(i)); await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    conns.append((r, w))
async def main():
    conns = []
    base = rss()
    for step in range(n // 1000):
        await asyncio.gather(*(one(conns, i) for i in range(1000)))
        await asyncio.sleep(0.5)
        now = rss()
        print(f"{len(conns)} idle: RSS {now/1024:.1f} MiB, {(now-base)/len(conns):.2f} KiB per connection", flush=True)
asyncio.run(main())
