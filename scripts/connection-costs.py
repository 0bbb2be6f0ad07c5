# The client side of scripts/bench-connections.sh: holds connections to a proxy and reports what
# they cost it. Every mode prints one JSON line.
#
#   connection-costs.py idle PROTO PORT PID N     PROTO: http | https | h2. Opens N connections
#       1,000 at a time, one GET each (the bench's tenants in rotation), then holds them idle;
#       RSS of PID (from /proc) after each step. Per connection: the least-squares slope of RSS
#       over the steps from 2,000 connections on (the first 2,000 also warm the backend pool,
#       the allocator and the TLS session state).
#   connection-costs.py hold PORT N               Opens N idle keep-alive connections (one GET
#       each), prints {"open": N}, and holds them until stdin closes.
#   connection-costs.py storm PORT N              Opens N connections at once, one GET each;
#       counts answers by status and connections that failed.
#
# Needs the bench data of ../shared/bench (tenants tnt_000001 … tnt_001000, origin
# https://app.tnt-NNNNNN.example) and, for h2, the `h2` package.
import asyncio
import asyncio.sslproto
import json
import ssl
import sys

STEP = 1000

# asyncio gives every TLS connection a 256 KiB read buffer: thousands of held connections would
# cost the client gigabytes (the proxy's memory is what is measured, but the machine is shared).
asyncio.sslproto.SSLProtocol.max_size = 16 * 1024


def tenant(i):
    return f"tnt_{i % 1000 + 1:06d}"


def request(i):
    t = tenant(i)
    return (f"GET /api/messages HTTP/1.1\r\nHost: gw\r\nX-Tenant-ID: {t}\r\n"
            f"Origin: https://app.{t.replace('_', '-')}.example\r\n\r\n").encode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def tls_context(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


async def http1(port, i, tls=None):
    """One connection, one GET read to its end; returns (status, connection)."""
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    w.write(request(i))
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return int(head.split(b" ")[1]), (r, w)


async def http2(port, i, tls):
    """One HTTP/2 connection (TLS, ALPN h2), one GET read to its end."""
    import h2.config
    import h2.connection
    import h2.events

    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    t = tenant(i)
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "gw"),
                          (":path", "/api/messages"), ("x-tenant-id", t),
                          ("origin", f"https://app.{t.replace('_', '-')}.example")],
                      end_stream=True)
    w.write(conn.data_to_send())
    status = None
    while True:
        data = await r.read(65536)
        if not data:
            raise ConnectionError("closed before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                w.write(conn.data_to_send())
                return status, (r, w, conn)
        w.write(conn.data_to_send())


async def one(proto, port, i):
    if proto == "http":
        return await http1(port, i)
    if proto == "https":
        return await http1(port, i, tls_context("http/1.1"))
    return await http2(port, i, tls_context("h2"))


async def idle(proto, port, pid, n):
    held, steps = [], []
    for start in range(0, n, STEP):
        answers = await asyncio.gather(*(one(proto, port, start + i) for i in range(STEP)))
        bad = [status for status, _ in answers if status != 200]
        if bad:
            raise SystemExit(f"{len(bad)} answers were not 200: {bad[:5]}")
        held += [conn for _, conn in answers]
        await asyncio.sleep(1)
        steps.append((len(held), rss_kib(pid)))
    print(json.dumps({"proto": proto, "connections": len(held),
                      "rss_mib": {str(c): round(k / 1024, 1) for c, k in steps},
                      "kib_per_connection": round(slope(steps[1:]), 2)}), flush=True)


def slope(points):
    """Least-squares growth of RSS per connection: the allocator takes memory from the system in
    chunks of megabytes, so two points alone are off by a chunk."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


async def hold(port, n):
    held = []
    for start in range(0, n, STEP):
        answers = await asyncio.gather(*(http1(port, start + i) for i in range(min(STEP, n - start))))
        held += [conn for _, conn in answers]
    print(json.dumps({"open": len(held)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def storm(port, n):
    async def attempt(i):
        try:
            status, (_, w) = await asyncio.wait_for(http1(port, i), 30)
            w.close()
            return str(status)
        except Exception as e:  # noqa: BLE001 — every failure is counted by its kind
            return type(e).__name__

    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(attempt(i) for i in range(n)))
    counts = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    print(json.dumps({"connections": n, "outcomes": counts,
                      "seconds": round(loop.time() - started, 2)}), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "idle":
        asyncio.run(idle(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif mode == "hold":
        asyncio.run(hold(int(args[0]), int(args[1])))
    elif mode == "storm":
        asyncio.run(storm(int(args[0]), int(args[1])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
