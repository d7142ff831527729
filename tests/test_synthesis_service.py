"""The synthesis service as users run it: `bentoml serve` in a subprocess, REST and gRPC on real ports.

Results equal the in-process LesionInpainter for the same seed (within one grey level: thread counts
differ between processes, see docs/DESIGN.md), bad inputs get clear 4xx / INVALID_ARGUMENT errors and the
service keeps answering, and health, reflection and metrics are served.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
from conftest import png_bytes
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from problems import assert_problem
from service_process import REPO, ServiceProcess

from models.data.images import decode_image
from services.grpc_stubs import synthesis_pb2, synthesis_pb2_grpc

pytestmark = pytest.mark.timeout(600)
STEPS = 4
MAX_PIXELS = 1_000_000
MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_synth):
    work = tmp_path_factory.mktemp("synthesis-service")
    env = {
        "LESIONSYNTH_SYNTHESIZER": str(tiny_synth),
        "LESIONSYNTH_MODEL_STORE": str(work / "store"),
        "LESIONSYNTH_MAX_PIXELS": str(MAX_PIXELS),
        "LESIONSYNTH_MAX_REQUEST_BYTES": str(MAX_BYTES),
        "LESIONSYNTH_SYNTHESIS_MAX_LATENCY_MS": "20000",
    }
    with ServiceProcess("services.synthesis.service:SynthesisService", work, env) as svc:
        yield svc


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def stub(service):
    channel = grpc.insecure_channel(service.grpc_target)
    yield synthesis_pb2_grpc.SynthesisStub(channel)
    channel.close()


@pytest.fixture()
def pair(normal_pair):
    image, mask = normal_pair
    return image, mask, png_bytes(image), png_bytes(mask.astype(np.uint8) * 255)


def close_to(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()}"


def test_rest_grpc_and_in_process_agree(http, stub, inpainter, pair):
    image, mask, image_png, mask_png = pair
    expected = inpainter.inpaint(image, mask, seed=7, steps=STEPS)
    r = http.post(
        "/synthesize",
        files={"image": ("i.png", image_png, "image/png"), "mask": ("m.png", mask_png, "image/png")},
        data={"seed": "7", "steps": str(STEPS)},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "7" and r.headers["x-model-version"] == inpainter.model_version
    rest = decode_image(r.content)
    close_to(rest, expected)
    outside = ~inpainter.editable_region(mask)
    assert np.array_equal(rest[outside], image[outside])  # untouched pixels stay bit-identical

    reply = stub.Synthesize(
        synthesis_pb2.SynthesizeRequest(image=image_png, mask=mask_png, seed=7, steps=STEPS)
    )
    assert reply.seed == 7 and reply.steps == STEPS and reply.model_version == inpainter.model_version
    close_to(decode_image(reply.image_png), expected)


def test_batch_api_with_per_item_settings(http, stub, inpainter, pair):
    image, mask, image_png, mask_png = pair
    b64 = base64.b64encode
    items = [
        {"image": b64(image_png).decode(), "mask": b64(mask_png).decode(), "seed": 1, "steps": STEPS},
        {"image": b64(image_png).decode(), "mask": b64(mask_png).decode(), "seed": 2, "steps": STEPS + 1},
    ]
    r = http.post("/synthesize_batch", json={"items": items})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["seed"] for o in out] == [1, 2] and [o["steps"] for o in out] == [STEPS, STEPS + 1]
    for o in out:
        expected = inpainter.inpaint(image, mask, seed=o["seed"], steps=o["steps"])
        close_to(decode_image(base64.b64decode(o["image"])), expected)
    reply = stub.SynthesizeBatch(
        synthesis_pb2.SynthesizeBatchRequest(
            items=[
                synthesis_pb2.SynthesizeRequest(image=image_png, mask=mask_png, seed=s, steps=STEPS)
                for s in (1, 3)
            ]
        )
    )
    assert [i.seed for i in reply.items] == [1, 3]


def test_unset_seed_is_drawn_and_reported(http, pair):
    _, _, image_png, mask_png = pair
    files = {"image": ("i.png", image_png, "image/png"), "mask": ("m.png", mask_png, "image/png")}
    first = http.post("/synthesize", files=files, data={"steps": str(STEPS)})
    assert first.status_code == 200
    seed = first.headers["x-seed"]
    again = http.post("/synthesize", files=files, data={"steps": str(STEPS), "seed": seed})
    close_to(decode_image(again.content), decode_image(first.content))


def test_info_health_reflection_metrics(http, service, inpainter):
    info = http.post("/info").json()
    assert info["model_version"] == inpainter.model_version and info["resolution"] == inpainter.resolution
    assert info["default_steps"] == 6 and info["max_pixels"] == MAX_PIXELS
    for path in ("/livez", "/readyz"):
        assert http.get(path).status_code == 200
    channel = grpc.insecure_channel(service.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="lesionsynth.v1.Synthesis")).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"lesionsynth.v1.Synthesis", "grpc.health.v1.Health"} <= names
    channel.close()
    metrics = http.get("/metrics").text
    assert "lesionsynth_synthesis_images_total" in metrics
    assert "lesionsynth_synthesis_seconds_per_image_bucket" in metrics
    assert "bentoml_service_request_total" in metrics
    served = re.search(r'lesionsynth_model_info\{[^}]*model_version="(\w+)"[^}]*\} 1\.0', metrics)
    assert served and served.group(1) == inpainter.model_version


def huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")  # 4 MP > the 1 MP limit, a few kB of bytes
    return buf.getvalue()


def grey16_png(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, 40000, np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def float_tiff(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ones(shape, np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def rest_bad_cases(image_png: bytes, mask_png: bytes, image: np.ndarray):
    f = lambda i=image_png, m=mask_png: {  # noqa: E731
        "image": ("i.png", i, "image/png"),
        "mask": ("m.png", m, "image/png"),
    }
    small_mask = png_bytes(np.full((image.shape[0] - 8, image.shape[1]), 255, np.uint8))
    empty_mask = png_bytes(np.zeros(image.shape[:2], np.uint8))
    return [
        ("not an image", dict(files=f(i=b"hello, not a png")), 422, "not a supported image"),
        ("truncated PNG", dict(files=f(i=image_png[: len(image_png) // 2])), 422, "truncated or corrupt"),
        ("mask size mismatch", dict(files=f(m=small_mask)), 422, "must be the same size"),
        ("empty mask", dict(files=f(m=empty_mask)), 422, "mask is empty"),
        ("huge dimensions", dict(files=f(i=huge_png())), 422, "over the limit"),
        ("wrong content type", dict(json={"image": "x", "mask": "y"}), 400, "image"),
        ("missing field", dict(files={"mask": ("m.png", mask_png, "image/png")}), 400, "image"),
        ("steps out of range", dict(files=f(), data={"steps": "0"}), 422, "steps must be"),
        ("too many steps", dict(files=f(), data={"steps": "5000"}), 422, "steps must be"),
        ("strength out of range", dict(files=f(), data={"strength": "1.5"}), 422, "strength must be"),
        ("negative seed", dict(files=f(), data={"seed": "-1"}), 400, "seed"),
        ("seed not a number", dict(files=f(), data={"seed": "abc"}), 400, "seed"),
        ("body over the byte limit", dict(files=f(i=b"\0" * (MAX_BYTES + 10))), 413, "over the limit"),
        (
            "multipart without a boundary",
            dict(content=b"x", headers={"content-type": "multipart/form-data"}),
            400,
            "without a boundary",
        ),
        (
            "malformed multipart part",
            dict(
                content=b"--b\r\ngarbage--b--\r\n",
                headers={"content-type": "multipart/form-data; boundary=b"},
            ),
            400,
            "",
        ),
        (
            "an image given as a URL",
            dict(
                data={"image": "http://example.org/x.png"}, files={"mask": ("m.png", mask_png, "image/png")}
            ),
            400,
            "URLs are not accepted",
        ),
        (
            "a whole body that is a URL",
            dict(content=b'"https://example.org/x.png"'),
            400,
            "URLs are not accepted",
        ),
        (
            "image under the minimum side",
            dict(files=f(i=png_bytes(image[:1, :1]), m=png_bytes(np.full((1, 1), 255, np.uint8)))),
            422,
            "1x1 is under the minimum of 32 pixels per side",
        ),
        ("16-bit image", dict(files=f(i=grey16_png(image.shape[:2]))), 422, "mode I;16 (16-bit grey)"),
        (
            "pickle",
            dict(content=b"x", headers={"content-type": "application/vnd.bentoml+pickle"}),
            415,
            "unsupported content type",
        ),
        (
            "plain text",
            dict(content=b"x", headers={"content-type": "text/plain"}),
            415,
            "unsupported content type",
        ),
    ]


def test_bad_rest_inputs_get_clear_errors_and_the_service_keeps_serving(http, service, pair):
    image, mask, image_png, mask_png = pair
    for name, kwargs, status, text in rest_bad_cases(image_png, mask_png, image):
        r = http.post("/synthesize", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert_problem(r, status, text)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    # 400: the request does not match the OpenAPI document; 422: it does, but its content cannot be used.
    batch_cases = [
        ("invalid base64", {"items": [{"image": "%%%", "mask": b64(mask_png)}]}, 400, "not valid base64"),
        ("empty batch", {"items": []}, 400, "items"),
        (
            "bad image in a batch",
            {"items": [{"image": b64(b"nope"), "mask": b64(mask_png)}]},
            422,
            "not a supported",
        ),
        (
            "strength out of range",
            {"items": [{"image": b64(image_png), "mask": b64(mask_png), "strength": 0}]},
            422,
            "strength",
        ),
    ]
    secret = b64(image_png)
    batch_cases.append(
        ("misspelt field", {"items": [{"imagee": secret, "mask": b64(mask_png)}]}, 400, "Field required")
    )
    for name, body, status, text in batch_cases:
        r = http.post("/synthesize_batch", json=body)
        problem = assert_problem(r, status, text)
        assert problem["errors"][0]["pointer"].startswith("#/items"), (name, problem)
        assert secret[:24] not in r.text
    ok = http.post(
        "/synthesize", files=rest_bad_cases(image_png, mask_png, image)[7][1]["files"], data={"steps": "2"}
    )
    assert ok.status_code == 200
    assert "lesionsynth_rejected_requests_total" in http.get("/metrics").text
    log = service.log_path.read_text(errors="replace")
    assert "invalid request: items.0.image: Field required" in log
    assert secret[:24] not in log and "input_value" not in log  # no image bytes in the service log


def test_bad_grpc_inputs_get_invalid_argument(stub, pair):
    image, mask, image_png, mask_png = pair
    empty_mask = png_bytes(np.zeros(image.shape[:2], np.uint8))
    cases = [
        ("not an image", dict(image=b"nope", mask=mask_png), "not a supported image"),
        ("missing image", dict(mask=mask_png), "image is missing"),
        ("empty mask", dict(image=image_png, mask=empty_mask), "mask is empty"),
        ("huge dimensions", dict(image=huge_png(), mask=mask_png), "over the limit"),
        (
            "image under the minimum side",
            dict(image=png_bytes(image[:20]), mask=mask_png),
            "under the minimum",
        ),
        (
            "float mask",
            dict(image=image_png, mask=float_tiff(image.shape[:2])),
            "mask: mode F (32-bit float)",
        ),
        ("steps out of range", dict(image=image_png, mask=mask_png, steps=0), "steps must be"),
        ("strength out of range", dict(image=image_png, mask=mask_png, strength=2.0), "strength must be"),
        ("seed out of range", dict(image=image_png, mask=mask_png, seed=2**63), "seed must be"),
    ]
    for name, fields, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Synthesize(synthesis_pb2.SynthesizeRequest(**fields))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert text in err.value.details(), (name, err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.SynthesizeBatch(synthesis_pb2.SynthesizeBatchRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "items is empty" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Synthesize(synthesis_pb2.SynthesizeRequest(image=b"\0" * (MAX_BYTES + 10), mask=mask_png))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reply = stub.Synthesize(synthesis_pb2.SynthesizeRequest(image=image_png, mask=mask_png, seed=1, steps=2))
    assert reply.image_png and reply.seed == 1


def test_balance_and_synthesize_remote_match_local(service, tiny_synth, demo_manifest, tmp_path, pair):
    """`lesionsynth balance --remote URL` paints the same images as the local run (within a grey level)."""
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from models.data.manifest import load_manifest

    runner = CliRunner()
    common = ["--manifest", str(demo_manifest), "--normal-label", "normal", "--lesion-label", "lesion"]
    common += ["--count", "3", "--steps", str(STEPS), "--seed", "5"]
    local = runner.invoke(
        app, ["balance", *common, "--model", str(tiny_synth), "--out", str(tmp_path / "local")]
    )
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        app, ["balance", *common, "--remote", service.url, "--out", str(tmp_path / "remote")]
    )
    assert remote.exit_code == 0, remote.output
    local_rows = [
        r for r in load_manifest(tmp_path / "local" / "manifest.csv").rows if r.fields.get("synthetic") == "1"
    ]
    remote_rows = [
        r
        for r in load_manifest(tmp_path / "remote" / "manifest.csv").rows
        if r.fields.get("synthetic") == "1"
    ]
    assert len(local_rows) == len(remote_rows) == 3
    for a, b in zip(local_rows, remote_rows, strict=True):
        close_to(a.load()[0], b.load()[0])

    image, mask, image_png, mask_png = pair
    (tmp_path / "i.png").write_bytes(image_png)
    (tmp_path / "m.png").write_bytes(mask_png)
    args = [
        "synthesize",
        "--image",
        str(tmp_path / "i.png"),
        "--mask",
        str(tmp_path / "m.png"),
        "--seed",
        "9",
    ]
    args += ["--steps", str(STEPS), "--remote", service.url, "--out", str(tmp_path / "o.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "x.png"), "--eta", "0.5"])
    assert bad.exit_code != 0 and "--eta" in bad.output


def test_client_reports_clear_errors_after_retries(service, pair):
    from service_process import free_port

    from services.client import RemoteError, SynthesisClient

    _, _, image_png, _ = pair
    with SynthesisClient(service.url, retries=0) as client:
        with pytest.raises(RemoteError, match="must be the same size") as err:
            client.synthesize(image_png, png_bytes(np.zeros((40, 40), np.uint8)))
        assert err.value.status == 422
    unreachable = SynthesisClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01)
    with unreachable, pytest.raises(RemoteError, match="cannot connect"):
        unreachable.info()


def test_refuses_to_start_without_a_sound_model(tmp_path, tiny_synth):
    """A missing model or one that fails its sha256 check stops the service at start, saying why."""
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_synth, corrupt)
    weights = next(corrupt.joinpath("unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    for model, reason in (
        (str(corrupt), "fails its sha256 check"),
        ("latest", "no synthesizer model has been published"),
    ):
        env = {"LESIONSYNTH_SYNTHESIZER": model, "LESIONSYNTH_MODEL_STORE": str(tmp_path / "empty-store")}
        svc = ServiceProcess(
            "services.synthesis.service:SynthesisService", tmp_path / model.replace("/", "_"), env
        )
        with pytest.raises(RuntimeError, match="exited") as err:
            svc.start(timeout=60)
        assert reason in str(err.value), str(err.value)[-2000:]


def test_serves_the_latest_store_version_and_reloads(tmp_path, tiny_synth, demo_manifest):
    """With LESIONSYNTH_SYNTHESIZER=latest the service follows what jobs publish: /reload, or polling."""
    from conftest import tiny_settings

    from models.diffusion.train import train_synthesizer
    from models.store import ModelStore

    store = ModelStore(tmp_path / "store")
    first = store.publish("synthesizer", tiny_synth)
    env = {"LESIONSYNTH_SYNTHESIZER": "latest", "LESIONSYNTH_MODEL_STORE": str(store.root)}
    with ServiceProcess("services.synthesis.service:SynthesisService", tmp_path / "svc", env) as svc:
        assert httpx.post(svc.url + "/info").json()["model_version"] == first.version
        other = tmp_path / "other"
        train_synthesizer(tiny_settings(demo_manifest, other, seed=1, max_steps=4))
        second = store.publish("synthesizer", other)
        assert second.version != first.version
        r = httpx.post(svc.url + "/reload").json()
        assert r == {"old_version": first.version, "new_version": second.version}
        assert httpx.post(svc.url + "/info").json()["model_version"] == second.version


def test_the_service_module_imports_without_torch(tiny_synth, tmp_path):
    """`bentoml serve` imports the module in its supervisor process too: without torch there it stays
    ~100 MB instead of ~850 MB per pod (models/diffusion/sampler_settings.py)."""
    env = {
        **os.environ,
        "LESIONSYNTH_SYNTHESIZER": str(tiny_synth),
        "LESIONSYNTH_MODEL_STORE": str(tmp_path / "store"),
    }
    code = "import sys, services.synthesis.service; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cuda_requested_without_a_gpu_is_refused_in_one_line(tiny_synth, tmp_path, monkeypatch):
    import torch

    from models.errors import ConfigError
    from services.synthesis.handler import SynthesisHandler
    from services.synthesis.settings import SynthesisSettings

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("LESIONSYNTH_SYNTHESIZER", str(tiny_synth))
    monkeypatch.setenv("LESIONSYNTH_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("LESIONSYNTH_DEVICE", "cuda")
    with pytest.raises(ConfigError, match="LESIONSYNTH_DEVICE=cuda but torch sees no CUDA device"):
        SynthesisHandler(SynthesisSettings.from_env())


def proposal_ok(mask_png: bytes, image: np.ndarray) -> np.ndarray:
    """The proposed mask: the image's size, 0/255, not empty, never touching the image border."""
    raw = np.asarray(Image.open(io.BytesIO(mask_png)))
    assert raw.shape == image.shape[:2] and set(np.unique(raw)) <= {0, 255}
    mask = raw > 127
    assert mask.any() and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    return mask


def test_propose_mask_and_synthesize_without_a_mask(http, stub, inpainter, pair):
    """Issue 13: propose_mask (REST + gRPC) and synthesize without a mask, which proposes and returns it."""
    image, _, image_png, _ = pair
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    r = http.post("/propose_mask", json={"image": b64(image_png), "seed": 5})
    assert r.status_code == 200, r.text
    assert r.json()["seed"] == 5
    proposal_png = base64.b64decode(r.json()["mask"])
    proposal = proposal_ok(proposal_png, image)
    again = http.post("/propose_mask", json={"image": b64(image_png), "seed": 5, "roi_mask": None}).json()
    assert np.array_equal(
        proposal_ok(base64.b64decode(again["mask"]), image), proposal
    )  # same seed, same mask
    reply = stub.ProposeMask(synthesis_pb2.ProposeMaskRequest(image=image_png, seed=5))
    assert reply.seed == 5 and np.array_equal(proposal_ok(reply.mask_png, image), proposal)
    others = [stub.ProposeMask(synthesis_pb2.ProposeMaskRequest(image=image_png, seed=s)) for s in (6, 7)]
    assert any(not np.array_equal(proposal_ok(o.mask_png, image), proposal) for o in others)
    drawn = http.post("/propose_mask", json={"image": b64(image_png)}).json()
    assert isinstance(drawn["seed"], int)

    roi = np.zeros(image.shape[:2], np.uint8)
    roi[:, : image.shape[1] * 2 // 3] = 255
    inside = http.post(
        "/propose_mask", json={"image": b64(image_png), "seed": 1, "roi_mask": b64(png_bytes(roi))}
    )
    assert inside.status_code == 200, inside.text
    assert not (proposal_ok(base64.b64decode(inside.json()["mask"]), image) & (roi == 0)).any()

    expected = inpainter.inpaint(image, proposal, seed=5, steps=STEPS)
    r = http.post(
        "/synthesize",
        files={"image": ("i.png", image_png, "image/png")},
        data={"seed": "5", "steps": str(STEPS)},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-proposed-mask"] == "true"
    assert np.array_equal(proposal_ok(base64.b64decode(r.headers["x-mask-png"]), image), proposal)
    close_to(decode_image(r.content), expected)

    items = [{"image": b64(image_png), "mask": None, "seed": 5, "steps": STEPS}]
    out = http.post("/synthesize_batch", json={"items": items})
    assert out.status_code == 200, out.text
    assert np.array_equal(proposal_ok(base64.b64decode(out.json()[0]["mask"]), image), proposal)
    close_to(decode_image(base64.b64decode(out.json()[0]["image"])), expected)

    reply = stub.Synthesize(synthesis_pb2.SynthesizeRequest(image=image_png, seed=5, steps=STEPS))
    assert np.array_equal(proposal_ok(reply.mask_png, image), proposal)
    close_to(decode_image(reply.image_png), expected)
    given = stub.Synthesize(
        synthesis_pb2.SynthesizeRequest(image=image_png, mask=proposal_png, seed=5, steps=STEPS)
    )
    assert given.mask_png == b""  # the caller's own mask is not echoed

    from services.client.http import SynthesisClient

    with SynthesisClient(str(http.base_url)) as client:
        mask_png, seed = client.propose_mask(image_png, seed=5)
        assert seed == 5 and np.array_equal(proposal_ok(mask_png, image), proposal)
        reply = client.synthesize(image_png, None, seed=5, steps=STEPS)
        assert np.array_equal(proposal_ok(reply.mask_png, image), proposal)

    bad = http.post("/propose_mask", json={"image": b64(b"not an image")})
    assert_problem(bad, 422, "not a supported image")
    assert_problem(http.post("/propose_mask", json={"image": "%%%"}), 400, "")
    dark = png_bytes(np.zeros_like(image))
    assert_problem(http.post("/propose_mask", json={"image": b64(dark)}), 422, "no place for a lesion")
    with pytest.raises(grpc.RpcError) as err:
        stub.ProposeMask(synthesis_pb2.ProposeMaskRequest(image=dark, seed=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no place" in err.value.details()


def test_dicom_in_provenance_out_and_the_audit_log(service, http, stub, pair):
    """A DICOM image (a multipart part, gRPC bytes) goes through the same decode path; every result PNG
    carries its provenance and one audit row (source rest | grpc, the source's sha256; no pixels)."""
    from pathlib import Path

    from dicom_samples import dataset, to_bytes

    from models.artifacts import sha256_bytes
    from models.audit import AuditLog
    from models.provenance import read_provenance

    image, _, _, mask_png = pair
    dicom = to_bytes(dataset(image))
    r = http.post(
        "/synthesize",
        files={"image": ("i.dcm", dicom, "application/dicom"), "mask": ("m.png", mask_png, "image/png")},
        data={"seed": "11", "steps": str(STEPS)},
    )
    assert r.status_code == 200, r.text
    made = read_provenance(r.content)
    assert made is not None and (made.seed, made.source_sha256) == (11, sha256_bytes(dicom))
    assert made.model_version == r.headers["x-model-version"]
    reply = stub.Synthesize(synthesis_pb2.SynthesizeRequest(image=dicom, mask=mask_png, seed=11, steps=STEPS))
    assert read_provenance(reply.image_png) == made

    audit = AuditLog(Path(service.env["LESIONSYNTH_MODEL_STORE"]).resolve().parent / "audit.sqlite")
    rows = audit.find(sha256_bytes(r.content)) + audit.find(sha256_bytes(reply.image_png))
    assert {e.source for e in rows} == {"rest", "grpc"}
    for e in rows:
        assert e.actor == "anonymous" and e.seed == 11 and e.image_sha256 == sha256_bytes(dicom)
        assert e.mask_sha256 == sha256_bytes(mask_png)


def test_synthesize_dicom_writes_a_synthetic_series_in_the_source_study(service, http, inpainter, pair):
    """/synthesize_dicom: the synthetic image as a DICOM of a new series in the source's study, saying
    SYNTHETIC, with the same pixels as /synthesize_batch's PNG for the same seed, its mask as a SEG, one
    audit row holding the DICOM's sha256; dciodvfy finds no errors. A non-DICOM source is a 422."""
    import json
    import shutil
    from pathlib import Path

    import pydicom
    from dicom_samples import VL_PHOTOGRAPHIC, dataset, to_bytes

    from models.artifacts import sha256_bytes
    from models.audit import AuditLog
    from models.data.images import decode_mask
    from models.provenance import read_provenance

    image, mask, image_png, mask_png = pair
    source = dataset(image, sop_class=VL_PHOTOGRAPHIC, modality="XC")
    dicom = to_bytes(source)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    item = {"image": b64(dicom), "mask": b64(mask_png), "seed": 21, "steps": STEPS}
    r = http.post("/synthesize_dicom", json={"items": [item]})
    assert r.status_code == 200, r.text
    [out] = r.json()
    assert out["seed"] == 21 and out["steps"] == STEPS and out["model_version"] == inpainter.model_version
    made_bytes = base64.b64decode(out["dicom"])
    made = pydicom.dcmread(io.BytesIO(made_bytes))
    assert made.StudyInstanceUID == source.StudyInstanceUID and made.PatientID == source.PatientID
    assert made.SeriesInstanceUID != source.SeriesInstanceUID
    assert made.SOPInstanceUID != source.SOPInstanceUID
    assert list(made.ImageType) == ["DERIVED", "SECONDARY"] and made.ConversionType == "SYN"
    assert "SYNTHETIC" in made.SeriesDescription and "SYNTHETIC" in made.ImageComments
    assert "seed 21" in made.DerivationDescription
    assert made.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    provenance = read_provenance(made_bytes)
    assert provenance is not None and provenance.seed == 21
    assert provenance.source_sha256 == sha256_bytes(dicom)

    png = http.post("/synthesize_batch", json={"items": [item]})
    assert png.status_code == 200, png.text
    assert np.array_equal(decode_image(made_bytes), decode_image(base64.b64decode(png.json()[0]["image"])))
    outside = ~inpainter.editable_region(mask)
    assert np.array_equal(decode_image(made_bytes)[outside], image[outside])

    seg_bytes = base64.b64decode(out["seg"])
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == made.SOPInstanceUID
    assert np.array_equal(decode_mask(seg_bytes), mask)

    audit = AuditLog(Path(service.env["LESIONSYNTH_MODEL_STORE"]).resolve().parent / "audit.sqlite")
    [row] = audit.find(sha256_bytes(made_bytes))
    assert (row.source, row.seed, row.image_sha256) == ("rest", 21, sha256_bytes(dicom))

    # No mask: a proposal (the SEG holds it), as /synthesize_batch would propose for this seed.
    proposed = http.post("/synthesize_dicom", json={"items": [{**item, "mask": None}]})
    assert proposed.status_code == 200, proposed.text
    batch = http.post("/synthesize_batch", json={"items": [{**item, "mask": None}]}).json()[0]
    proposal = decode_mask(base64.b64decode(batch["mask"]))
    assert np.array_equal(decode_mask(base64.b64decode(proposed.json()[0]["seg"])), proposal)

    doc = http.get("/docs.json").json()
    assert doc["paths"]["/synthesize_dicom"]["post"]["requestBody"]["required"] is True
    declared = json.dumps(doc["components"]["schemas"])
    assert "DicomItemResult" in declared and "DicomSynthesisItem" in declared
    for name in ("DicomItemResult", "DicomSynthesisItem"):
        fields = doc["components"]["schemas"][name]["properties"]
        for field in ("dicom", "seg") if name == "DicomItemResult" else ("image", "mask"):
            assert "byte" in json.dumps(fields[field]), (name, field)  # base64, as declared

    not_dicom = {**item, "image": b64(image_png)}
    body = assert_problem(http.post("/synthesize_dicom", json={"items": [not_dicom]}), 422, "DICOM source")
    assert body["type"].endswith("invalid-image")

    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is not None:  # Debian's dicom3tools (tests/test_dicom.py: warnings allowed, no errors)
        from test_dicom import dciodvfy_errors

        for name, data in (("synthetic.dcm", made_bytes), ("synthetic.seg.dcm", seg_bytes)):
            path = Path(service.workdir) / name
            path.write_bytes(data)
            assert dciodvfy_errors(path) == [], name
