"""Load and fuzz the report drafting service (`llavarad serve`) on loopback, `tiny` preset.

Load: 64 concurrent clients x 8 requests each, real radiographs from ../shared/data (PNG and DICOM)
and varied indications, against `llavarad serve` with dynamic batching (--max-batch-size 8) and
with --max-batch-size 1, in the same run. Reports requests/s (ratio, goal >= 3x), p50/p95 latency,
that every request was answered exactly once (its X-Request-Id comes back once), zero 5xx, and
that both servers gave the same draft for the same image and indication.

Fuzz: >= 1,000 malformed requests against a fresh server: schemathesis cases generated from its
OpenAPI schema (negative and positive modes) plus hand-made ones (truncated multipart, wrong types,
decompression bombs, a 10 MB indication, invalid base64, non-UTF-8 text, deep JSON, lying headers,
slow uploads). Goal: zero 5xx, zero dropped connections, bounded server memory growth, health and
a real request still fine afterwards.

    python benchmarks/serve_load.py [--clients 64] [--requests 8] [--new-tokens 256] [--fuzz 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
INDICATIONS = [None, "Shortness of breath.", "Cough and fever.", "Chest pain after a fall.", "Pre-operative."]


# -- a server in a subprocess -----------------------------------------------------------------------
class Server:
    """`llavarad serve` on a free loopback port; ``with Server(model, ...) as url:``, always stopped."""

    def __init__(self, model: Path, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.cmd = [sys.executable, "-m", "llavarad", "serve", "--model", str(model), "--port", str(self.port),
                    *extra]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc: the memory figure needs Linux")

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("server did not become ready in 180 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def build_model(out: Path) -> Path:
    from llavarad.model.build import init_random, save_model

    save_model(init_random("tiny", seed=0), out)
    return out


# -- load -----------------------------------------------------------------------------------------
async def _client(http: httpx.AsyncClient, url: str, cid: int, n: int, images: list[tuple[str, bytes]],
                  out: list[dict]) -> None:
    for k in range(n):
        i = (cid * n + k) % len(images)
        ind = INDICATIONS[(cid + k) % len(INDICATIONS)]
        rid = f"c{cid}-r{k}"
        data = {"indication": ind} if ind else {}
        start = time.perf_counter()
        try:
            r = await http.post(url + "/v1/reports", files={"image": images[i]}, data=data,
                                headers={"X-Request-Id": rid})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            out.append({"rid": rid, "status": r.status_code, "seconds": time.perf_counter() - start,
                        "echo": body.get("id"), "key": (i, ind), "findings": body.get("findings")})
        except httpx.HTTPError as exc:
            out.append({"rid": rid, "status": -1, "seconds": time.perf_counter() - start, "echo": None,
                        "key": (i, ind), "findings": None, "exc": type(exc).__name__})


async def _load(url: str, clients: int, per_client: int, images: list[tuple[str, bytes]]) -> tuple[list[dict], float]:
    out: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, url, c, per_client, images, out) for c in range(clients)))
        return out, time.perf_counter() - start


def _batch_stats(metrics: str) -> dict[str, float]:
    """Mean batch size and the share of the run the model was busy, from the server's /metrics."""
    values = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in ("llavarad_batch_size_sum", "llavarad_batch_size_count", "llavarad_batch_seconds_sum"):
            values[name] = float(value)
    count = values.get("llavarad_batch_size_count", 0) or 1
    return {"mean_batch": values.get("llavarad_batch_size_sum", 0) / count,
            "model_seconds": values.get("llavarad_batch_seconds_sum", 0)}


def run_load(model: Path, batch: int, args, images) -> dict:
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    with Server(model, "--max-batch-size", str(batch), "--max-new-tokens", str(args.new_tokens),
                "--max-queue", str(max(64, args.clients)), *threads) as srv:
        rows, seconds = asyncio.run(_load(srv.url, args.clients, args.requests, images))
        stats = _batch_stats(httpx.get(srv.url + "/metrics", timeout=30).text)
    lat = sorted(r["seconds"] for r in rows)
    echoes = Counter(r["echo"] for r in rows if r["status"] == 200)
    expected = {f"c{c}-r{k}" for c in range(args.clients) for k in range(args.requests)}
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    return {"rps": len(rows) / seconds, "p50": q[49] * 1000, "p95": q[94] * 1000, "rows": rows, **stats,
            "status": Counter(r["status"] for r in rows),
            "exactly_once": set(echoes) == expected and all(v == 1 for v in echoes.values()),
            "findings": {r["key"]: r["findings"] for r in rows if r["status"] == 200}}


# -- fuzz: hand-made malformed requests -------------------------------------------------------------
def _png(width: int, height: int) -> bytes:
    """A valid gray PNG header for any size with a tiny zlib stream (a decompression bomb when big)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    raw = zlib.compress(b"\x00" * min(width + 1, 4096) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "llavaradfuzz") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, value, filename in fields:
        out.write(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disp}\r\n\r\n".encode())
        out.write(value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _chat(content, model: str = "tiny", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def malformed_requests(rng: random.Random, n: int, real: list[bytes]) -> list[tuple[str, str, dict, bytes]]:
    """``n`` hand-made bad requests ``(method, path, headers, body)``, cycling through the kinds."""
    img = real[0]
    uri = "data:image/png;base64," + base64.b64encode(img).decode()
    jpeg_bomb = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xc0\x00\x0b\x08\xff\xff\xff\xff\x01\x01\x11\x00\xff\xd9"
    dicom_lie = b"\x00" * 128 + b"DICM" + bytes(rng.randbytes(300))
    makers = [
        lambda: ("POST", "/v1/reports", {"content-type": "multipart/form-data; boundary=b"}, b""),
        lambda: ("POST", "/v1/reports", {"content-type": _multipart([("image", img, "a.png")])[1]},
                 _multipart([("image", img, "a.png")])[0][: rng.randrange(10, len(img))]),
        lambda: ("POST", "/v1/reports", {"content-type": "multipart/form-data"}, b"--x\r\n\r\n"),
        lambda: ("POST", "/v1/reports", {"content-type": "application/json"}, b'{"image": 1}'),
        lambda: ("POST", "/v1/reports", {"content-type": "multipart/form-data; boundary=" + "b" * 200}, b"x"),
        lambda: _form([("image", _png(30000, 30000), "bomb.png")]),
        lambda: _form([("image", _png(rng.randrange(1, 31), rng.randrange(1, 31)), "small.png")]),
        lambda: _form([("image", jpeg_bomb, "bomb.jpg")]),
        lambda: _form([("image", dicom_lie, "lie.dcm")]),
        lambda: _form([("image", img[: rng.randrange(60, 4000)], "cut.png")]),
        lambda: _form([("image", rng.randbytes(rng.randrange(0, 3000)), "noise.png")]),
        lambda: _form([("image", b"%PDF-1.7 " + rng.randbytes(500), "x.png")]),
        lambda: _form([("image", b"GIF89a" + rng.randbytes(500), "x.dcm")]),
        lambda: _form([("image", img, "a.png"), ("indication", b"x" * 10_000_000, None)]),
        lambda: _form([("image", img, "a.png"), ("indication", b"\xff\xfe\xfa" + rng.randbytes(50), None)]),
        lambda: _form([("image", img, "a.png"), ("indication", b"word " * 2000, None)]),
        lambda: _form([("image", img, "a.png"), ("indication", b"bad\x00\x07text", None)]),
        lambda: _form([("image", img, "a.png"), ("explain", b"maybe", None)]),
        lambda: _form([("indication", b"no image", None)]),
        lambda: _form([("image", img, "a.png"), ("image", img, "b.png")]),
        lambda: _form([(f"f{i}", b"x", None) for i in range(40)]),
        lambda: ("POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{not json"),
        lambda: ("POST", "/v1/chat/completions", {"content-type": "application/json"}, b"\xff\xfe" + rng.randbytes(40)),
        lambda: ("POST", "/v1/chat/completions", {"content-type": "application/json"}, b"[" * 50_000 + b"]" * 50_000),
        lambda: ("POST", "/v1/chat/completions", {}, json.dumps({"model": 3, "messages": "hi"}).encode()),
        lambda: ("POST", "/v1/chat/completions", {}, _chat("just text")),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}])),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}])),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": "data:image/png," + "A" * 100}}])),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": uri}}], model="gpt-4o")),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": uri}}] * 2)),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": uri}},
                                                            {"type": "text", "text": "x " * 5000}])),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(rng.randbytes(2000)).decode()}}])),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "image_url", "image_url": {"url": uri}}], n=3)),
        lambda: ("POST", "/v1/chat/completions", {}, _chat([{"type": "video", "video": 1}])),
        lambda: ("GET", "/v1/reports", {}, b""),
        lambda: ("DELETE", "/v1/models", {}, b""),
        lambda: ("GET", "/" + "a" * rng.randrange(1, 3000), {}, b""),
        lambda: ("POST", "/v1/preview", {"x-request-id": "<script>" * 20}, _multipart([("image", b"", "e.png")])[0]),
    ]
    out = []
    for k in range(n):
        method, path, headers, body = makers[k % len(makers)]()
        out.append((method, path, headers, body))
    return out


def _form(fields: list[tuple[str, bytes, str | None]]) -> tuple[str, str, dict, bytes]:
    body, ctype = _multipart(fields)
    return "POST", "/v1/reports", {"content-type": ctype}, body


def send_all(url: str, requests: list[tuple[str, str, dict, bytes]], workers: int = 8) -> Counter:
    """Send the requests (8 at a time); count statuses (-1: the connection failed or was dropped)."""
    def one(req: tuple[str, str, dict, bytes]) -> int:
        method, path, headers, body = req
        try:
            with httpx.Client(timeout=60) as http:
                return http.request(method, url + path, headers=headers, content=body).status_code
        except httpx.HTTPError:
            return -1

    with ThreadPoolExecutor(workers) as pool:
        return Counter(pool.map(one, requests))


def raw_requests(url: str, slow: int = 4) -> Counter:
    """Requests an HTTP library would not send: a lying Content-Length and slow uploads (one byte
    every 0.5 s; the server must answer 408 within its --upload-timeout, not hold the slot)."""
    host, port = url.removeprefix("http://").split(":")

    def exchange(head: bytes, body_chunks: list[bytes], pause: float) -> int:
        try:
            with socket.create_connection((host, int(port)), timeout=30) as s:
                s.sendall(head)
                for chunk in body_chunks:
                    s.sendall(chunk)
                    time.sleep(pause)
                data = s.recv(200)
            return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else -1
        except (OSError, ValueError, IndexError):
            return -1

    lie = (b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
           b"Content-Length: 1099511627776\r\n\r\n")
    slow_head = (b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n")
    with ThreadPoolExecutor(slow + 1) as pool:
        jobs = [pool.submit(exchange, lie, [], 0)]
        jobs += [pool.submit(exchange, slow_head, [b"-"] * 20, 0.5) for _ in range(slow)]
        return Counter(j.result() for j in jobs)


def schema_fuzz(url: str, n: int) -> Counter:
    """``n`` requests generated by schemathesis from the server's own OpenAPI schema."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    statuses: Counter = Counter()
    per = max(1, n // (2 * len(ops)))
    for op in ops:
        for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE):
            @settings(max_examples=per, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                try:
                    statuses[case.call(base_url=url, timeout=60).status_code] += 1
                except Exception:  # noqa: BLE001 - a dropped connection is what we count
                    statuses[-1] += 1
            try:
                run()
            except Unsatisfiable:  # e.g. no negative case for a GET without parameters
                pass
    return statuses


def run_fuzz(model: Path, n: int, real: list[bytes]) -> dict:
    rng = random.Random(0)
    with Server(model, "--max-new-tokens", "8", "--upload-timeout", "2") as srv:
        ok = httpx.post(srv.url + "/v1/reports", files={"image": ("a.png", real[0])}, timeout=120).status_code
        before = srv.rss_mib()
        start = time.perf_counter()
        statuses = schema_fuzz(srv.url, n // 2)
        hand = n - sum(statuses.values())
        statuses += send_all(srv.url, malformed_requests(rng, max(hand, 0), real))
        statuses += raw_requests(srv.url)
        seconds = time.perf_counter() - start
        after = srv.rss_mib()
        health = httpx.get(srv.url + "/healthz", timeout=10).status_code == 200 and \
            httpx.get(srv.url + "/readyz", timeout=10).status_code == 200
        again = httpx.post(srv.url + "/v1/reports", files={"image": ("a.png", real[0])}, timeout=120).status_code
        alive = srv.proc.poll() is None
    return {"statuses": statuses, "seconds": seconds, "rss_growth": after - before, "rss_before": before,
            "healthy": health and ok == 200 and again == 200 and alive}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8, help="Requests per client.")
    ap.add_argument("--new-tokens", type=int, default=256,
                    help="Longest draft (the server's default and the paper's; a random model seldom stops early).")
    ap.add_argument("--fuzz", type=int, default=1200, help="Malformed requests (0: skip the fuzz run).")
    ap.add_argument("--torch-threads", type=int, default=None, help="Passed to both servers (default: torch's).")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: the benchmark uses the real radiographs there")
    files = sorted(p for p in DATA.iterdir() if p.suffix in (".png", ".dcm"))
    images = [(p.name, p.read_bytes()) for p in files]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "tiny")
        print(f"tiny preset, {len(images)} real images, {args.clients} clients x {args.requests} requests, "
              f"{args.new_tokens} new tokens at most")
        if not args.skip_load:
            single = run_load(model, 1, args, images)
            batched = run_load(model, 8, args, images)
            for name, r in (("max-batch-size 1", single), ("max-batch-size 8", batched)):
                print(f"{name}: {r['rps']:.2f} req/s, p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, "
                      f"statuses {dict(r['status'])}, exactly once {r['exactly_once']}, mean batch {r['mean_batch']:.1f}, "
                  f"model busy {r['model_seconds']:.0f} s of {len(r['rows']) / r['rps']:.0f} s")
            same = batched["findings"] == single["findings"] and len(batched["findings"]) > 0
            five = sum(v for k, v in (single["status"] + batched["status"]).items() if k >= 500 or k < 0)
            print(f"RESULT serve_batching_speedup {batched['rps'] / single['rps']:.2f} x goal=>=3")
            print(f"RESULT serve_batched_throughput {batched['rps']:.2f} req/s goal=none")
            print(f"RESULT serve_single_throughput {single['rps']:.2f} req/s goal=none")
            print(f"RESULT serve_batched_p50 {batched['p50']:.0f} ms goal=none")
            print(f"RESULT serve_batched_p95 {batched['p95']:.0f} ms goal=none")
            print(f"RESULT serve_answered_exactly_once {int(single['exactly_once'] and batched['exactly_once'])} bool goal=1")
            print(f"RESULT serve_load_5xx {five} responses goal=0")
            print(f"RESULT serve_batched_equals_single {int(same)} bool goal=1")
        if args.fuzz:
            f = run_fuzz(model, args.fuzz, [b for _, b in images])
            total = sum(f["statuses"].values())
            bad = sum(v for k, v in f["statuses"].items() if k >= 500 or k < 0)
            print(f"fuzz: {total} requests in {f['seconds']:.0f} s, statuses {dict(sorted(f['statuses'].items()))}, "
                  f"server RSS {f['rss_before']:.0f} MiB before, {f['rss_growth']:+.0f} MiB after")
            print(f"RESULT serve_fuzz_requests {total} requests goal=>=1000")
            print(f"RESULT serve_fuzz_5xx_or_dropped {bad} responses goal=0")
            print(f"RESULT serve_fuzz_rss_growth {f['rss_growth']:.0f} MiB goal=<=256")
            print(f"RESULT serve_fuzz_healthy_after {int(f['healthy'])} bool goal=1")


if __name__ == "__main__":
    main()
