"""The HTTP/JSON path, as docs/interface.md shows it to users of any language.

The three commands of its "HTTP and JSON" section (curl with a JSON body and a data
URL, curl with the binary tensor extension, tritonclient.http) are run verbatim but
for the server's address, from a folder holding `photo.jpg`; each must give the
probabilities the raw-bytes gRPC call gives for the same image and hypothesis. A
bare string that is no image gets the message that points at the two ways that work.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine.image import NOT_AN_IMAGE
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.server_process import TritonServer

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "interface.md"
PHOTO = TEST_IMAGES["landscape_640x480_jpeg"]
HYPOTHESIS = "Two dogs play in the snow."  # the documented one
DOC_ADDRESS = "127.0.0.1:8000"


def _section_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the "HTTP and JSON" section."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## HTTP and JSON") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^```(\w+)\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def documented(language: str, marker: str) -> str:
    """The section's one `language` block that contains `marker`."""
    (code,) = [c for lang, c in _section_blocks() if lang == language and marker in c]
    return code


def grpc_probs(client: grpcclient.InferenceServerClient, image: bytes) -> np.ndarray:
    inputs = []
    for name, value in (("IMAGE", image), ("HYPOTHESIS", HYPOTHESIS.encode())):
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    return client.infer(MODEL_NAME, inputs).as_numpy("PROBS")[0]


def run_documented(code: str, server: TritonServer, folder: Path, *command: str) -> str:
    """Run a documented block in `folder` (which holds photo.jpg) against `server`."""
    assert DOC_ADDRESS in code
    code = code.replace(DOC_ADDRESS, server.http_url)
    shutil.copyfile(PHOTO, folder / "photo.jpg")
    done = subprocess.run(
        [*command, code], cwd=folder, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def json_probs(body: str) -> tuple[str, np.ndarray]:
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["PROBS"]["shape"] == [1, 3]
    return outputs["LABEL"]["data"][0], np.array(outputs["PROBS"]["data"], dtype=np.float32)


def test_the_documented_curl_json_body_answers_as_grpc(
    triton_server: TritonServer, grpc_client, tmp_path: Path
) -> None:
    code = documented("bash", "data:image/jpeg;base64,")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"```bash\n{code}```" in readme  # the README's call is this very block
    label, probs = json_probs(run_documented(code, triton_server, tmp_path, "bash", "-ec"))
    body = json.loads((tmp_path / "request.json").read_text())  # plain JSON, a data URL
    assert body["inputs"][0]["data"][0].startswith("data:image/jpeg;base64,/9j/")
    want = grpc_probs(grpc_client, PHOTO.read_bytes())
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    assert label in ("entailment", "neutral", "contradiction")


def test_the_documented_binary_extension_call_answers_as_grpc(
    triton_server: TritonServer, grpc_client, tmp_path: Path
) -> None:
    code = documented("bash", "Inference-Header-Content-Length")
    _, probs = json_probs(run_documented(code, triton_server, tmp_path, "bash", "-ec"))
    np.testing.assert_allclose(probs, grpc_probs(grpc_client, PHOTO.read_bytes()), atol=1e-6)


def test_the_documented_tritonclient_http_call_answers_as_grpc(
    triton_server: TritonServer, grpc_client, tmp_path: Path
) -> None:
    code = documented("python", "tritonclient.http")
    out = run_documented(code, triton_server, tmp_path, sys.executable, "-c")
    label, probs = out.split(" ", 1)
    np.testing.assert_allclose(
        json.loads(probs), grpc_probs(grpc_client, PHOTO.read_bytes()), atol=1e-6
    )
    assert label in ("entailment", "neutral", "contradiction")


def _post(server: TritonServer, image_value: str) -> tuple[int, dict]:
    body = {
        "inputs": [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1], "data": [image_value]},
            {"name": "HYPOTHESIS", "datatype": "BYTES", "shape": [1, 1], "data": [HYPOTHESIS]},
        ]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL_NAME}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("value", ["a photo of two dogs", "https://example.com/dogs.jpg"])
def test_a_bare_string_that_is_no_image_gets_the_json_hint(
    triton_server: TritonServer, value: str
) -> None:
    status, body = _post(triton_server, value)
    assert status == 400
    assert body["error"] == f"IMAGE: {NOT_AN_IMAGE}"
    assert body["error"].startswith(
        "IMAGE: not an image; over HTTP/JSON send raw bytes with the binary extension, or a "
        "data:image/...;base64 URL"
    )


def test_bare_base64_answers_as_the_data_url(triton_server: TritonServer, grpc_client) -> None:
    """The documented rule: base64 of a JPEG without the data: prefix is read too."""
    status, body = _post(triton_server, base64.b64encode(PHOTO.read_bytes()).decode())
    assert status == 200, body
    _, probs = json_probs(json.dumps(body))
    np.testing.assert_allclose(probs, grpc_probs(grpc_client, PHOTO.read_bytes()), atol=1e-6)
    status, body = _post(triton_server, "data:text/plain;base64,aGVsbG8=")
    assert status == 400 and body["error"].startswith("IMAGE: is a data URL of text/plain")
