#!/usr/bin/env python3
"""Differential framing test: the same bytes through nginx (a strict reference) and through
tenantgate, each in front of its own recording backend; what the backends receive is compared.

The backends parse with h11 (a strict HTTP/1.1 parser) and record every request (method,
target, body). A case is a finding when
  - tenantgate forwards where nginx refuses (nginx answers 4xx and its backend sees nothing), or
  - the backends see different requests (count, method, target or body), or
  - tenantgate's backend sees bytes h11 cannot parse (a desynchronised connection), or
  - after a case, a normal request on the same proxy is not served correctly (a poisoned pool).
Where tenantgate is stricter than nginx on purpose (it refuses, nginx forwards), the case is
listed in STRICTER with the reason; such a difference is reported but is no finding.

Usage: python3 scripts/differential.py PATH/TO/tenantgate   (needs nginx and h11)
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import h11

H = b"Host: a.example\r\nX-Tenant-ID: tnt_a\r\n"


def req(line, extra=b"", body=b""):
    return line + b"\r\n" + H + extra + b"\r\n" + body


NEXT = req(b"GET /next HTTP/1.1", b"Connection: close\r\n")

# (name, bytes). Every case is followed on the same connection by a normal request (NEXT):
# whether it is served tells whether the proxy kept its framing after the case.
CASES = [
    ("plain GET", req(b"GET /a?b=1 HTTP/1.1")),
    ("POST with length", req(b"POST /p HTTP/1.1", b"Content-Length: 5\r\n", b"hello")),
    ("POST chunked", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")),
    ("chunk extension", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5;a=b\r\nhello\r\n0\r\n\r\n")),
    ("trailer", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")),
    ("Connection names Content-Length", req(b"POST /p HTTP/1.1", b"Connection: Content-Length\r\nContent-Length: 68\r\n",
        b"GET /smuggled HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_forged\r\n\r\n")),
    ("Connection names Transfer-Encoding", req(b"POST /p HTTP/1.1", b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")),
    ("Connection names Host", req(b"GET /h HTTP/1.1", b"Connection: Host\r\n")),
    ("CL and TE", req(b"POST /p HTTP/1.1", b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    ("TE then CL", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n")),
    ("TE gzip, chunked", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n")),
    ("TE identity", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello")),
    ("TE chunked twice", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    ("TE with space before colon", req(b"POST /p HTTP/1.1", b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"hello")),
    ("TE on HTTP/1.0", req(b"POST /p HTTP/1.0", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    ("CL repeated equal", req(b"POST /p HTTP/1.1", b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    ("CL list", req(b"POST /p HTTP/1.1", b"Content-Length: 5, 5\r\n", b"hello")),
    ("CL conflicting", req(b"POST /p HTTP/1.1", b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")),
    ("CL sign", req(b"POST /p HTTP/1.1", b"Content-Length: +5\r\n", b"hello")),
    ("CL hex", req(b"POST /p HTTP/1.1", b"Content-Length: 0x5\r\n", b"hello")),
    ("CL overflow", req(b"POST /p HTTP/1.1", b"Content-Length: 99999999999999999999\r\n", b"hello")),
    ("chunk size sign", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"+5\r\nhello\r\n0\r\n\r\n")),
    ("chunk size 0x", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n")),
    ("chunk size space", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n")),
    ("chunk size overflow", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
    ("chunk data without CRLF", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n")),
    ("chunk line bare LF", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n")),
    ("chunk extension bare CR", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n")),
    ("trailer obs-fold", req(b"POST /p HTTP/1.1", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nx-t: 1\r\n 2\r\n\r\n")),
    ("obs-fold", req(b"GET /o HTTP/1.1", b"X-A: 1\r\n 2\r\n")),
    ("bare CR in value", req(b"GET /o HTTP/1.1", b"X-A: 1\r2\r\n")),
    ("NUL in value", req(b"GET /o HTTP/1.1", b"X-A: 1\x002\r\n")),
    ("bare LF line ends", b"GET /lf HTTP/1.1\nHost: a.example\nX-Tenant-ID: tnt_a\n\n"),
    ("space before colon", req(b"GET /o HTTP/1.1", b"X-A : 1\r\n")),
    ("underscore name", req(b"GET /u HTTP/1.1", b"X_Tenant_ID: forged\r\n")),
    ("no Host", b"GET /nohost HTTP/1.1\r\nX-Tenant-ID: tnt_a\r\n\r\n"),
    ("two Hosts", b"GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-Tenant-ID: tnt_a\r\n\r\n"),
    ("Host with slash", b"GET /h HTTP/1.1\r\nHost: a.example/x\r\nX-Tenant-ID: tnt_a\r\n\r\n"),
    ("Host with user info", b"GET /h HTTP/1.1\r\nHost: u@a.example\r\nX-Tenant-ID: tnt_a\r\n\r\n"),
    ("absolute form", req(b"GET http://b.example/abs?q HTTP/1.1")),
    ("absolute form without path", req(b"GET http://b.example?q HTTP/1.1")),
    ("asterisk on GET", req(b"GET * HTTP/1.1")),
    ("authority form on GET", req(b"GET a.example:80 HTTP/1.1")),
    ("CONNECT", req(b"CONNECT a.example:443 HTTP/1.1")),
    ("fragment", req(b"GET /f#x HTTP/1.1")),
    ("HTTP/1.2", req(b"GET / HTTP/1.2")),
    ("two spaces in request line", req(b"GET  / HTTP/1.1")),
    ("pipelined after a refusal", req(b"POST /p HTTP/1.1", b"Content-Length: 1, 2\r\n") + req(b"GET /after HTTP/1.1")),
    ("pipelined three", req(b"GET /1 HTTP/1.1") + req(b"POST /2 HTTP/1.1", b"Content-Length: 2\r\n", b"hi") + req(b"GET /3 HTTP/1.1")),
    # The backend misbehaves on these paths (see Backend.answer); the next request checks the pool.
    ("backend: CL and TE", req(b"GET /resp/cl-te HTTP/1.1")),
    ("backend: conflicting CL", req(b"GET /resp/double-cl HTTP/1.1")),
    ("backend: bad chunk", req(b"GET /resp/bad-chunk HTTP/1.1")),
    ("backend: body on 204", req(b"GET /resp/204-body HTTP/1.1")),
    ("backend: longer than its length", req(b"GET /resp/too-long HTTP/1.1")),
]

# Cases where tenantgate refuses on purpose what nginx 1.22 forwards (DESIGN.md, "HTTP/1.1
# framing"): reported, not findings.
STRICTER = {
    "CL repeated equal": "a repeated Content-Length is refused even when the values agree",
    "CL list": "a Content-Length list is refused even when the values agree",
    "chunk size space": "chunk sizes are hex digits only",
    "chunk line bare LF": "every chunked line ends in CRLF",
    "chunk extension bare CR": "chunk extensions are validated",
    "trailer obs-fold": "trailer lines are validated",
    "fragment": "a fragment is not part of a request target",
    "Host with user info": "Host is host[:port]",
    "asterisk on GET": "asterisk-form is for OPTIONS only",
    "authority form on GET": "authority-form is for CONNECT only, which the gateway refuses",
    "TE with space before colon": "whitespace before a colon is refused (nginx ignores the line)",
    "HTTP/1.2": "only HTTP/1.0 and HTTP/1.1 are read as HTTP/1.x",
    "two spaces in request line": "the request line is method SP target SP version, exactly",
    "backend: CL and TE": "a backend answer with both framings is passed on chunked but its connection is not reused",
}


class Backend:
    """A backend that parses each connection with h11 and records every request."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.errors = []
        threading.Thread(target=self.accept, daemon=True).start()

    def take(self):
        with self.lock:
            r, e = self.requests, self.errors
            self.requests, self.errors = [], []
            return r, e

    def accept(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @staticmethod
    def answer(target):
        canned = {
            b"/resp/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"/resp/double-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            b"/resp/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            b"/resp/204-body": b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
            b"/resp/too-long": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED",
        }
        return canned.get(target), target in canned

    def serve(self, conn):
        parser = h11.Connection(h11.SERVER)
        current = None
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    parser.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    current = {"method": event.method.decode(), "target": event.target.decode(),
                               "tenant": [v.decode() for k, v in event.headers if k == b"x-tenant-id"],
                               "body": b""}
                elif isinstance(event, h11.Data):
                    current["body"] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    current["body"] = current["body"].decode("latin-1")
                    with self.lock:
                        self.requests.append(current)
                    raw, misbehaves = self.answer(current["target"].encode())
                    if misbehaves:
                        conn.sendall(raw)
                        conn.close()
                        return
                    body = b"ok " + current["target"].encode()
                    conn.sendall(parser.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])))
                    conn.sendall(parser.send(h11.Data(data=body)))
                    conn.sendall(parser.send(h11.EndOfMessage()))
                    parser.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as e:
            with self.lock:
                self.errors.append(str(e))
        except (OSError, h11.LocalProtocolError):
            pass
        finally:
            conn.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def exchange(port, data, timeout=5.0):
    """Sends data and reads until the proxy closes (or the timeout). No half-close: nginx takes
    a client's FIN as an abort of the request in flight."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    finally:
        s.close()
    return out


def statuses(raw):
    """The status of every response in raw (status lines can follow a body directly)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def main():
    gateway_bin = sys.argv[1] if len(sys.argv) > 1 else "target/debug/tenantgate"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="tg-diff-")
    procs = []
    try:
        nb, gb = Backend(), Backend()
        nport, gport = free_port(), free_port()
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""
daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream backend {{ server 127.0.0.1:{nb.port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{nport};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        procs.append(subprocess.Popen([nginx, "-c", os.path.join(work, "nginx.conf"), "-e", os.path.join(work, "nginx-error.log")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(nport, procs[-1], "nginx")
        with open(os.path.join(work, "tenants.json"), "w") as f:
            json.dump([{"apiKey": "tnt_a", "allowedOrigins": ["https://a.example"], "isActive": True,
                        "maxConcurrentConnections": 100,
                        "providerConfig": {"resources": {"endpoint": "https://ep.example", "region": "eu"}}}], f)
        with open(os.path.join(work, "gateway.toml"), "w") as f:
            f.write(f"""[server]\nlisten = "127.0.0.1:{gport}"\nheader_read_timeout_secs = 2\n
[upstream]\nurl = "http://127.0.0.1:{gb.port}"\nresponse_timeout_ms = 2000\n
[store]\nkind = "file"\npath = "{work}/tenants.json"\n[tenancy]\nrequire_origin = false\n
[admin]\nlisten = "127.0.0.1:0"\n""")
        gateway_log = open(os.path.join(work, "gateway.log"), "w")
        procs.append(subprocess.Popen([gateway_bin, "run", "--config", os.path.join(work, "gateway.toml")],
                                      stdout=gateway_log, stderr=subprocess.STDOUT))
        wait_port(gport, procs[-1], "tenantgate")

        findings, stricter = [], []
        print(f"{'case':42} {'nginx':>14} {'tenantgate':>14}  backend requests (nginx / tenantgate)")
        for name, data in CASES:
            nb.take(), gb.take()
            n_out, g_out = exchange(nport, data + NEXT), exchange(gport, data + NEXT)
            time.sleep(0.05)
            (n_reqs, n_err), (g_reqs, g_err) = nb.take(), gb.take()
            # A fresh request afterwards: the proxy and its pooled backend connections still work.
            n_after, g_after = exchange(nport, req(b"GET /check HTTP/1.1", b"Connection: close\r\n")), \
                exchange(gport, req(b"GET /check HTTP/1.1", b"Connection: close\r\n"))
            time.sleep(0.02)
            (_, n_err2), (g_after_reqs, g_err2) = nb.take(), gb.take()
            ns, gs = statuses(n_out), statuses(g_out)
            key = lambda rs: [(r["method"], r["target"], r["body"]) for r in rs]
            print(f"{name:42} {str(ns):>14} {str(gs):>14}  {len(n_reqs)} / {len(g_reqs)}")
            problems = []
            if g_err or g_err2:
                problems.append(f"tenantgate's backend could not parse what it got: {g_err + g_err2}")
            if any(r["tenant"] != ["tnt_a"] for r in g_reqs):
                problems.append(f"a backend request without the gateway's tenant header: {g_reqs}")
            if any("smuggled" in r["target"] or "INJECTED" in r["target"] for r in g_reqs):
                problems.append("a smuggled request reached the backend")
            if b"INJECTED" in g_out or b"INJECTED" in g_after:
                problems.append("a backend's extra bytes reached a client as a response")
            if statuses(g_after)[:1] != [200] or [r["target"] for r in g_after_reqs] != ["/check"]:
                problems.append(f"the next request was not served cleanly: {statuses(g_after)} {g_after_reqs}")
            n_refused = not n_reqs and any(400 <= s < 500 for s in ns)
            g_refused = not g_reqs and any(400 <= s < 500 for s in gs)
            if n_refused and g_reqs:
                problems.append(f"tenantgate forwarded what nginx refused: {key(g_reqs)}")
            elif key(n_reqs) != key(g_reqs):
                if name in STRICTER and (g_refused or len(g_reqs) < len(n_reqs)):
                    stricter.append((name, STRICTER[name]))
                elif not name.startswith("backend:"):
                    problems.append(f"the backends saw different requests: nginx {key(n_reqs)} / tenantgate {key(g_reqs)}")
            for p in problems:
                findings.append(f"{name}: {p}")
        print()
        for name, why in stricter:
            print(f"stricter than nginx (on purpose): {name}: {why}")
        if findings:
            print("\nFINDINGS:")
            for f in findings:
                print("  " + f)
            sys.exit(1)
        print(f"\n{len(CASES)} cases: no finding")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
