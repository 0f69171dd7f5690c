#!/usr/bin/env python3
"""The unhappy HTTP layer that Schemathesis does not reach: raw bytes on a socket.

    python3 tests/fuzz/raw_http.py PORT MODEL_ID

Sends malformed JSON, lying Content-Length headers, non-UTF-8 bytes, wrong content types,
oversized headers and URLs, deeply nested JSON, broken chunked encoding, request smuggling
shapes and plain garbage to a running `lowbit serve`, each on its own connection, and requires
each to be answered by a 4xx (or, where the HTTP framing itself is broken, by a 4xx or a closed
connection). A 5xx, a 2xx/3xx, or no answer within the per-case timeout fails the case. Between
cases it checks that /ready still answers 200, so the first case that takes the server down is
the one named. It also drops a streamed completion half way, to exercise the "client gone"
path (scripts/fuzz.sh then checks that no request or KV block is left behind).

Standard library only. Exit status: 0 when every case passed, 1 otherwise.
"""

import json
import socket
import sys
import time

HOST = "127.0.0.1"
TIMEOUT = 15.0  # seconds for one case's answer (the server answers these in milliseconds)
MiB = 1024 * 1024


def exchange(port, data, *, shutdown_write=False, timeout=TIMEOUT):
    """Sends `data` (bytes) on a fresh connection; returns (status or None, head+body bytes).

    status None means the server closed (or reset) the connection without an HTTP answer.
    Raises TimeoutError when nothing conclusive arrives within `timeout`."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    received = b""
    try:
        try:
            sock.sendall(data)
            if shutdown_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413, 431, ...) and close before reading everything
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                if received:
                    break  # an answer came and the connection stayed open (keep-alive)
                raise TimeoutError("no answer") from None
            if not chunk:
                break
            received += chunk
            if _complete(received):
                break
    finally:
        sock.close()
    if not received.startswith(b"HTTP/"):
        return None, received
    try:
        return int(received.split(b" ", 2)[1]), received
    except (IndexError, ValueError):
        return None, received


def _complete(received):
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
    return False


def request(method, path, body=b"", headers=(), *, content_length=None, content_type="application/json"):
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if content_type is not None:
        lines.append(b"Content-Type: " + (content_type if isinstance(content_type, bytes) else content_type.encode()))
    if content_length is None:
        content_length = len(body)
    if content_length is not False:
        lines.append(b"Content-Length: " + str(content_length).encode())
    lines += [h if isinstance(h, bytes) else h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def cases(model):
    """(name, bytes, options): options.framing=True when closing the connection is an
    acceptable answer; options.envelope=True when the answer must be lowbit's JSON error."""
    chat = "/v1/chat/completions"
    good_chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 2}).encode()
    yield "truncated JSON (chat)", request("POST", chat, good_chat[: len(good_chat) // 2]), {"envelope": True}
    yield "truncated JSON (completions)", request(
        "POST", "/v1/completions", b'{"model": "' + model.encode() + b'", "prompt": "ab'), {"envelope": True}
    yield "truncated JSON (tokenize)", request("POST", "/tokenize", b'{"prompt": '), {"envelope": True}
    yield "truncated JSON (detokenize)", request("POST", "/detokenize", b'{"tokens": [1, 2,'), {"envelope": True}
    yield "empty body", request("POST", chat, b""), {"envelope": True}
    yield "JSON null body", request("POST", chat, b"null"), {"envelope": True}
    yield "JSON array body", request("POST", "/v1/completions", b"[]"), {"envelope": True}
    yield "trailing garbage after JSON", request("POST", chat, good_chat + b"}}garbage"), {"envelope": True}
    yield "NUL bytes in body", request("POST", "/tokenize", b'{"prompt": "a\x00b"\x00}'), {"envelope": True}
    yield "non-UTF-8 bytes in a JSON string", request(
        "POST", chat, b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "\xff\xfe\xc3("}]}'
    ), {"envelope": True}
    yield "non-UTF-8 bytes as the whole body", request("POST", "/tokenize", bytes(range(128, 256)) * 8), {"envelope": True}
    yield "lone UTF-16 surrogate escape", request(
        "POST", "/tokenize", b'{"prompt": "\\ud800\\udbff x"}'
    ), {"ok_2xx": True}  # serde accepts or rejects lone surrogates; either is fine, not a 5xx
    yield "UTF-8 BOM before JSON", request("POST", "/tokenize", b'\xef\xbb\xbf{"prompt": "hi"}'), {"ok_2xx": True}
    yield "number overflow (1e999)", request(
        "POST", chat, b'{"model": "' + model.encode() + b'", "messages": [], "max_tokens": 1e999}'
    ), {"envelope": True}
    yield "huge integer literal", request(
        "POST", "/detokenize", b'{"tokens": [' + b"9" * 5000 + b"]}"
    ), {"envelope": True}
    yield "1 MiB of nested [[[[", request("POST", chat, b"[" * MiB), {"envelope": True}
    yield "1 MiB of nested [[[[ inside a field", request(
        "POST", chat, b'{"model": "' + model.encode() + b'", "messages": ' + b"[" * MiB
    ), {"envelope": True}
    yield "nested objects 100k deep", request("POST", "/tokenize", b'{"a":' * 100_000 + b"1" + b"}" * 100_000), {"envelope": True}
    yield "nested arrays 200 deep, well-formed", request(
        "POST", "/detokenize", b'{"tokens": ' + b"[" * 200 + b"]" * 200 + b"}"
    ), {"envelope": True}
    # Accepted on purpose (curl and some clients send JSON as text/plain): see api/limits.rs.
    yield "Content-Type text/plain", request("POST", chat, good_chat, content_type="text/plain"), {"ok_2xx": True}
    yield "Content-Type form-urlencoded", request(
        "POST", "/tokenize", b"prompt=hi", content_type="application/x-www-form-urlencoded"), {}
    yield "Content-Type multipart without boundary", request(
        "POST", "/tokenize", b'{"prompt": "hi"}', content_type="multipart/form-data"), {}
    # No Content-Type at all: reading the body as JSON anyway is a fair choice.
    yield "Content-Type missing", request("POST", "/tokenize", b'{"prompt": "hi"}', content_type=None), {"ok_2xx": True}
    yield "Content-Type with a bogus charset", request(
        "POST", "/tokenize", b'{"prompt": "hi"}', content_type="application/json; charset=klingon"), {"ok_2xx": True}
    yield "Content-Type non-ASCII bytes", request(
        "POST", "/tokenize", b'{"prompt": "hi"}', content_type=b"application/\xffjson"), {"framing": True}
    yield "Content-Type application/xml", request(
        "POST", "/v1/completions", b'{"model": "' + model.encode() + b'", "prompt": "a", "max_tokens": 1}',
        content_type="application/xml"), {}
    yield "Content-Length far over the body limit, short body", request(
        "POST", chat, b'{"model"', content_length=10**12), {"framing": True}
    yield "Content-Length over the body limit (u64::MAX)", request(
        "POST", chat, b"{}", content_length=2**64 - 1), {"framing": True}
    yield "Content-Length not a number", request("POST", chat, b"{}", content_length="12abc"), {"framing": True}
    yield "Content-Length negative", request("POST", chat, b"{}", content_length="-5"), {"framing": True}
    yield "two different Content-Lengths", request(
        "POST", chat, b"{}", headers=["Content-Length: 7"]), {"framing": True}
    yield "body over --max-body-bytes (5 MiB of JSON string)", request(
        "POST", "/tokenize", b'{"prompt": "' + b"a" * (5 * MiB) + b'"}'), {"framing": True}
    yield "Transfer-Encoding chunked, bad chunk size", request(
        "POST", chat, b"zz\r\n{}\r\n0\r\n\r\n", headers=["Transfer-Encoding: chunked"], content_length=False,
    ), {"framing": True}
    yield "Transfer-Encoding chunked, truncated", request(
        "POST", chat, b"ffff\r\n{\"model\":", headers=["Transfer-Encoding: chunked"], content_length=False,
    ), {"framing": True, "shutdown_write": True}
    yield "Transfer-Encoding chunked plus Content-Length", request(
        "POST", chat, b"2\r\n{}\r\n0\r\n\r\n", headers=["Transfer-Encoding: chunked"], content_length=3,
    ), {"framing": True}
    yield "Transfer-Encoding unknown coding", request(
        "POST", chat, b"{}", headers=["Transfer-Encoding: gzip, klingon"], content_length=False,
    ), {"framing": True}
    yield "Content-Encoding gzip, body not gzip", request(
        "POST", "/tokenize", b'{"prompt": "hi"}', headers=["Content-Encoding: gzip"]), {"ok_2xx": True}
    yield "Content-Length 1000, 20 bytes, then half-close", request(
        "POST", chat, b'{"model": "x", "mes', content_length=1000), {"framing": True, "shutdown_write": True}
    # hyper buffers up to ~400 KiB of head by default: 200 KiB may be accepted, 1 MiB may not.
    yield "one 200 KiB header", request("GET", "/v1/models", headers=["X-Junk: " + "a" * (200 * 1024)]), {"framing": True, "ok_2xx": True}
    yield "one 1 MiB header", request("GET", "/v1/models", headers=["X-Junk: " + "a" * MiB]), {"framing": True}
    yield "2000 headers", request("GET", "/v1/models", headers=[f"X-H{i}: {i}" for i in range(2000)]), {"framing": True}
    yield "100 KiB Authorization header", request(
        "GET", "/v1/models", headers=["Authorization: Bearer " + "k" * (100 * 1024)]), {"framing": True, "ok_2xx": True}
    yield "header with non-UTF-8 value", request("GET", "/v1/models", headers=[b"X-Junk: \xff\xfe\x80"]), {"framing": True, "ok_2xx": True}
    yield "header with NUL", request("GET", "/v1/models", headers=[b"X-Junk: a\x00b"]), {"framing": True}
    yield "header without colon", request("GET", "/v1/models", headers=["ThisIsNotAHeader"]), {"framing": True}
    yield "200 KiB URL", f"GET /v1/models/{'m' * (200 * 1024)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), {"framing": True}
    yield "non-UTF-8 percent-escapes in a path parameter", b"GET /v1/models/%ff%fe%80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"framing": True}
    yield "raw non-UTF-8 bytes in the path", b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"framing": True}
    yield "path traversal", b"GET /v1/models/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"framing": True}
    yield "absolute-form URI to elsewhere", request("GET", "http://example.invalid/v1/models"), {"framing": True, "ok_2xx": True}
    yield "unknown route", request("POST", "/v1/embeddings", b"{}"), {}
    yield "wrong method", request("DELETE", "/v1/chat/completions", b""), {}
    yield "made-up method", request("BREW", "/v1/chat/completions", b"{}"), {"framing": True}
    yield "garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello, not HTTP\r\n\r\n", {"framing": True}
    yield "HTTP/9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", {"framing": True}
    yield "request line only, no CRLF, then half-close", b"GET /health HTTP/1.1", {"framing": True, "shutdown_write": True}
    yield "lone LF line endings", b"GET /v1/models HTTP/1.1\nHost: x\nConnection: close\n\n", {"framing": True, "ok_2xx": True}
    yield "64 KiB of random bytes", bytes((i * 7919 + 13) % 256 for i in range(64 * 1024)), {"framing": True}


def check_ready(port):
    status, _ = exchange(port, request("GET", "/ready", content_type=None, content_length=False), timeout=10)
    return status == 200


def dropped_stream(port, model):
    """Starts a streamed completion, reads its first event, and hangs up mid-generation."""
    body = json.dumps({"model": model, "prompt": "1, 2, 3,", "max_tokens": 40, "ignore_eos": True,
                       "n": 2, "stream": True}).encode()
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    received = b""
    try:
        sock.sendall(request("POST", "/v1/completions", body))
        while b"data: " not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    if not received.startswith(b"HTTP/1.1 200"):
        print(f"raw-http: dropped stream got: {received[:300]!r}")
        return False
    return True


def main():
    port, model = int(sys.argv[1]), sys.argv[2]
    failures = 0
    total = 0
    for name, data, opts in cases(model):
        total += 1
        try:
            status, raw = exchange(port, data, shutdown_write=opts.get("shutdown_write", False))
        except (TimeoutError, OSError) as exc:
            status, raw, verdict = "no answer", b"", f"FAIL ({type(exc).__name__}: {exc})"
        else:
            if status is None:
                verdict = "ok" if opts.get("framing") else "FAIL (connection closed without an answer)"
            elif 400 <= status < 500:
                verdict = "ok"
                if opts.get("envelope"):
                    body = raw.partition(b"\r\n\r\n")[2]
                    try:
                        error = json.loads(body)["error"]
                        assert isinstance(error["message"], str) and isinstance(error["type"], str)
                    except Exception:
                        verdict = "FAIL (4xx without the JSON error envelope)"
            elif 200 <= status < 300 and opts.get("ok_2xx"):
                verdict = "ok (accepted; allowed here)"
            else:
                verdict = f"FAIL (status {status})"
        detail = raw.partition(b"\r\n\r\n")[2][:160].decode("utf-8", "replace") if raw else ""
        print(f"raw-http: {verdict:<10} {status!s:>9}  {name}  {detail}")
        if verdict.startswith("FAIL"):
            failures += 1
        if not check_ready(port):
            print(f"raw-http: FAIL server not ready after: {name}")
            return 1
    total += 1
    try:
        ok = dropped_stream(port, model)
    except OSError as exc:
        ok = False
        print(f"raw-http: dropped stream: {exc}")
    print(f"raw-http: {'ok' if ok else 'FAIL':<10} {'':>9}  streamed chat dropped after its first bytes")
    failures += 0 if ok else 1
    if not check_ready(port):
        print("raw-http: FAIL server not ready after the dropped stream")
        return 1
    print(f"raw-http: {total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
