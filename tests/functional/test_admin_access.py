"""ofa_ve_ops.admin_access: Triton's admin APIs behind the operators' key, as the container
runs it, against a real tritonserver: inference answered, admin calls refused without
the key and served with it; no key, no start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from ofa_ve_ops import admin_access
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.server_process import TritonServer
from support.servers import running
from tritonclient.utils import InferenceServerException

SECRET = "0123456789abcdef0123456789abcdef"


def test_flags_cover_every_admin_api_on_both_endpoints() -> None:
    grpc_flag, http_flag = admin_access.restricted_flags(SECRET)
    for flag, name in (
        (grpc_flag, "--grpc-restricted-protocol="),
        (http_flag, "--http-restricted-api="),
    ):
        assert flag.startswith(name)
        apis, _, key = flag[len(name) :].partition(":")
        assert set(apis.split(",")) == set(admin_access.ADMIN_APIS)
        assert key == f"admin-key={SECRET}"
        assert "inference" not in apis and "health" not in apis and "metadata" not in apis


@pytest.mark.parametrize(
    "secret", ["short", "has,comma-0123456789", "has:colon-0123456789", "white space 0123456789"]
)
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(admin_access.AdminKeyError):
        admin_access.restricted_flags(secret)


def test_secret_from_a_file_wins_and_no_secret_means_no_start(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(SECRET + "\n")
    env = {admin_access.KEY_FILE_ENV: str(key_file), admin_access.KEY_ENV: "ignored" * 3}
    assert admin_access.secret_from_env(env) == SECRET
    assert admin_access.closed_command(["x"], env)[1:] == admin_access.restricted_flags(SECRET)
    assert admin_access.closed_command(["x"], {admin_access.OPEN_ENV: "1"}) == ["x"]
    with pytest.raises(admin_access.AdminKeyError, match=admin_access.KEY_FILE_ENV):
        admin_access.closed_command(["x"], {})
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OFA_VE_ADMIN")}
    refused = subprocess.run(
        [sys.executable, "-m", "ofa_ve_ops.admin_access", "--", "true"],
        env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 78 and "no admin key" in refused.stderr


class ContainerLikeServer(TritonServer):
    """tritonserver started the way docker/Dockerfile's ENTRYPOINT starts it: through
    admin_access, then the stub watchdog."""

    def command(self) -> list[str]:
        watchdog = [sys.executable, "-m", "ofa_ve_ops.stub_watchdog", "--poll-interval", "0.5"]
        wrapper = [sys.executable, "-m", "ofa_ve_ops.admin_access", "--"]
        return [*wrapper, *watchdog, "--", *super().command()]


@pytest.fixture(scope="module")
def closed_server(server_factory, tmp_path_factory, tiny_model_dir) -> Iterator[TritonServer]:
    """The container's command line (tiny checkpoint: access is tested, not the network)."""
    key_file = tmp_path_factory.mktemp("secret") / "admin-key"
    key_file.write_text(SECRET)
    server = server_factory(
        ContainerLikeServer,
        model_dir=tiny_model_dir,
        env={admin_access.KEY_FILE_ENV: str(key_file)},
    )
    with running(server):  # started, READY; killed at the end
        yield server


def _infer(client: tgrpc.InferenceServerClient) -> str:
    inputs = []
    for name, value in (
        ("IMAGE", TEST_IMAGES["tiny_50x40_png"].read_bytes()),
        ("HYPOTHESIS", HYPOTHESES[0].encode()),
    ):
        tensor = tgrpc.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    result = client.infer(MODEL_NAME, inputs, client_timeout=120)
    return result.as_numpy("LABEL")[0, 0].decode()


def test_inference_open_admin_refused_without_the_key(closed_server) -> None:
    header = {admin_access.GRPC_HEADER: SECRET}
    with tgrpc.InferenceServerClient(closed_server.grpc_url) as client:
        assert _infer(client) in ("entailment", "neutral", "contradiction")
        assert client.is_server_ready() and client.get_model_metadata(MODEL_NAME)
        # Read-only and what the SDK sizes its requests by: open.
        assert client.get_model_config(MODEL_NAME).config.max_batch_size >= 1
        for call in (
            lambda **kw: client.get_model_repository_index(**kw),
            lambda **kw: client.get_log_settings(**kw),
            lambda **kw: client.get_trace_settings(**kw),
            lambda **kw: client.get_system_shared_memory_status(**kw),
        ):
            with pytest.raises(InferenceServerException, match=r"(?i)restricted"):
                call()
            call(headers=header)  # the operators' key opens it
        with pytest.raises(InferenceServerException, match=r"(?i)restricted"):
            client.get_log_settings(headers={admin_access.GRPC_HEADER: "wrong" * 5})
    import urllib.error
    import urllib.request

    url = f"http://{closed_server.http_url}/v2/logging"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url, timeout=10)
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={admin_access.KEY_HEADER: SECRET}), timeout=10
    ) as response:
        assert response.status == 200
