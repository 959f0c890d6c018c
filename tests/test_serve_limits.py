"""The service's limits: safe defaults, bearer keys, queue full -> 503, deadline -> 504, a client
that disconnects gives its slot back, upload caps enforced while reading, in-memory multipart.

Queue and deadline tests hold the model with a gated generator (a test double wrapping the real
tiny model), so they do not depend on how fast the machine is.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

KEY = "k3y-for-tests-0123456789abcdef"


class GatedGenerator:
    """A ReportGenerator whose generate_many waits until the test opens the gate."""

    def __init__(self, bundle):
        from llavarad.generate import ReportGenerator

        self._real = ReportGenerator(bundle)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    @property
    def bundle(self):
        return self._real.bundle

    @property
    def settings(self):
        return self._real.settings

    @settings.setter
    def settings(self, value):
        self._real.settings = value

    def prepare(self, image):
        return self._real.prepare(image)

    def generate_many(self, images, indications=None):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self._real.generate_many(images, indications)


@pytest.fixture(scope="module")
def gated(tiny_bundle):
    from llavarad.serve import ServeConfig, create_app
    from llavarad.serve.background import BackgroundServer

    gen = GatedGenerator(tiny_bundle)
    config = ServeConfig(max_new_tokens=4, max_batch_size=1, max_queue=1, max_wait_ms=0, request_timeout_s=4.0)
    with BackgroundServer(create_app(config, gen, model_id="gated")) as srv:
        srv.gen = gen
        yield srv
        gen.gate.set()


@pytest.fixture(scope="module")
def png(shared_data) -> bytes:
    return (shared_data / "images" / "00000001_000.png").read_bytes()


def _post(url: str, png: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(url + "/v1/reports", files={"image": ("a.png", png)}, timeout=timeout)


def _wait_for(cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_queue_full_is_503_with_retry_after(gated, png):
    worker = gated.app.state.service.worker
    gated.gen.gate.clear()
    gated.gen.entered.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, gated.url, png)        # taken by the worker, held at the gate
        assert gated.gen.entered.wait(10)
        waiting = pool.submit(_post, gated.url, png)        # fills the one queue slot
        assert _wait_for(lambda: worker.depth == 1)
        full = _post(gated.url, png)
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        gated.gen.gate.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_deadline_is_504_and_disconnect_gives_the_slot_back(gated, png):
    service = gated.app.state.service
    gated.gen.gate.clear()
    gated.gen.entered.clear()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(_post, gated.url, png)
        assert gated.gen.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):               # queued, then the client hangs up
            _post(gated.url, png, timeout=0.5)
        assert _wait_for(lambda: service.metrics.value("llavarad_cancelled_total", reason="disconnect") >= 1)
        assert _wait_for(lambda: service.worker.depth == 0), "the disconnected request kept its slot"
        late = _post(gated.url, png)                          # admitted (not 503), then past its 4 s deadline
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        assert service.worker.depth == 0
        gated.gen.gate.set()
        assert held.result().status_code == 504             # it waited at the gate past its deadline too
    assert _post(gated.url, png).status_code == 200         # and the worker is fine afterwards


def test_public_bind_needs_an_api_key(tmp_path, tiny_model_dir, capsys):
    from llavarad.cli import main
    from llavarad.serve import ServeConfig, ServeConfigError

    with pytest.raises(ServeConfigError, match="api-key-file"):
        ServeConfig(host="0.0.0.0")
    short = tmp_path / "short.txt"
    short.write_text("abc\n")
    with pytest.raises(ServeConfigError, match="shorter than 16"):
        ServeConfig(host="0.0.0.0", api_key_file=str(short))
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# serve keys\n{KEY}\n")
    assert ServeConfig(host="0.0.0.0", api_key_file=str(keys)).api_keys == (KEY,)
    assert ServeConfig().host == "127.0.0.1" and ServeConfig().cors_origins == ()
    assert main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0"]) != 0
    assert "--api-key-file" in capsys.readouterr().err


def test_bearer_key_guards_the_api(tmp_path, tiny_bundle):
    from starlette.testclient import TestClient

    from llavarad.generate import ReportGenerator
    from llavarad.serve import ServeConfig, create_app

    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    app = create_app(ServeConfig(api_key_file=str(keys)), ReportGenerator(tiny_bundle), model_id="m")
    client = TestClient(app)  # no lifespan: the routes under test never reach the model
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-000000000"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"] == "m"
    assert client.post("/v1/reports", content=b"x").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_upload_cap_is_enforced_while_reading(tiny_bundle):
    from starlette.testclient import TestClient

    from llavarad.generate import ReportGenerator
    from llavarad.serve import ServeConfig, create_app

    app = create_app(ServeConfig(max_upload_bytes=1000), ReportGenerator(tiny_bundle))
    client = TestClient(app)

    def body():  # chunked (no Content-Length): the cap must stop the read, not a header check
        for _ in range(100):
            yield b"x" * 500

    r = client.post("/v1/reports", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = client.post("/v1/reports", content=b"", headers={"content-length": str(10**12)})
    assert r.status_code == 413


def test_multipart_parses_in_memory_and_refuses_broken_bodies():
    from llavarad.serve.limits import parse_multipart
    from llavarad.serve.schemas import ApiError

    image = bytes(range(256)) * 8192  # 2 MiB: Starlette's parser would have spooled this to a temp file
    body = (b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.dcm\"\r\n\r\n" + image +
            b"\r\n--B\r\nContent-Disposition: form-data; name=\"indication\"\r\n\r\nCough.\r\n--B--\r\n")
    form = parse_multipart(body, "multipart/form-data; boundary=B", file_field="image", max_field_bytes=100)
    assert form.file == image and form.fields == {"indication": "Cough."}
    for cut in (10, len(body) // 2, len(body) - 5):
        with pytest.raises(ApiError) as exc:
            parse_multipart(body[:cut], "multipart/form-data; boundary=B", file_field="image", max_field_bytes=100)
        assert exc.value.status == 400
    with pytest.raises(ApiError) as exc:
        parse_multipart(body, "multipart/form-data; boundary=B", file_field="image", max_field_bytes=3)
    assert exc.value.status == 413 and exc.value.code == "field_too_large"


def test_cors_is_off_unless_an_origin_is_named(tiny_bundle):
    from starlette.testclient import TestClient

    from llavarad.generate import ReportGenerator
    from llavarad.serve import ServeConfig, ServeConfigError, create_app

    preflight = {"Origin": "http://pacs.example", "Access-Control-Request-Method": "POST"}
    closed = TestClient(create_app(ServeConfig(), ReportGenerator(tiny_bundle)))
    assert "access-control-allow-origin" not in closed.options("/v1/reports", headers=preflight).headers
    assert "access-control-allow-origin" not in closed.get("/healthz", headers={"Origin": "http://pacs.example"}).headers
    opened = TestClient(create_app(ServeConfig(cors_origins=("http://pacs.example",)), ReportGenerator(tiny_bundle)))
    r = opened.options("/v1/reports", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://pacs.example"
    with pytest.raises(ServeConfigError, match="any web page"):
        ServeConfig(cors_origins=("*",))
