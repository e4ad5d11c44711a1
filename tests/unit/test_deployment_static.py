"""Static checks of the production deployment: docker/, .dockerignore, docs/deployment.md.

Why static: there is no Docker engine or cluster here, so the container and the
manifests are proven by the tools the platforms themselves are checked with (hadolint,
the compose-spec JSON schema, Kubernetes' OpenAPI schemas via kubernetes-validate) and
by cross-checks that they agree with the code they deploy: ports, flags, the model
name, health paths, environment variables, the Triton release, the metric the
autoscaler scales on, and the commands in the docs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths
from google.protobuf import text_format
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from tritonclient.grpc import model_config_pb2

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
HADOLINT_CONFIG = REPO / "docker" / ".hadolint.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"
K8S_DIR = REPO / "docker" / "kubernetes"
DOCS = REPO / "docs" / "deployment.md"
MODEL_DIR = REPO / "model_repository" / "ofa_visual_entailment"

# Files in docker/kubernetes/ that are not Kubernetes objects, checked on their own.
KUSTOMIZATION = "kustomization.yaml"
ADAPTER_VALUES = "prometheus-adapter-values.yaml"
# Custom resources: no PyPI package ships the prometheus-operator CRD schemas, so they
# get no schema validation here (documented skip); test_servicemonitor_* checks the
# fields that matter and `kubectl apply --dry-run=server` (docs) checks the rest.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Oldest Kubernetes we support (autoscaling/v2, policy/v1 and
# unhealthyPodEvictionPolicy are all there) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

# Triton release carried by each nvidia-pytriton version the tests run on (measured:
# the 0.7.0 wheel holds tritonserver 2.51.0, i.e. container release 24.10). A new pin
# in requirements/triton.txt must be added here, and the image moved to match.
PYTRITON_TRITON_RELEASE = {"0.7.0": (24, 10)}
# Python of NVIDIA's tritonserver containers (24.xx: Ubuntu 22.04, Python 3.10.12);
# the engine's pins must install there.
CONTAINER_PYTHON = {(24, 10): "3.10.12"}

TRITON_HEALTH_PATHS = {"/v2/health/ready", "/v2/health/live"}
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    line: int
    stage: int


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions and build stages, the way the Dockerfile frontend reads them."""
    instructions: list[Instruction] = []
    stages: list[Stage] = []
    parts: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not parts:
            if not line or line.startswith("#"):
                continue
            start = lineno
        elif not line or line.startswith("#"):
            continue  # comments and blank lines inside a continuation are dropped
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, value = " ".join(p for p in parts if p).partition(" ")
        parts = []
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        instructions.append(Instruction(keyword, value.strip(), start, len(stages) - 1))
    assert not parts, "the Dockerfile ends inside a line continuation"
    return instructions, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage_instructions(parsed: tuple[list[Instruction], list[Stage]]) -> list[Instruction]:
    instructions, stages = parsed
    return [i for i in instructions if i.stage == len(stages) - 1]


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def image_cmd(parsed: tuple[list[Instruction], list[Stage]]) -> list[str]:
    cmd = one(final_stage_instructions(parsed), "CMD").value
    assert cmd.startswith("["), "CMD must be in exec (JSON) form so tritonserver gets SIGTERM"
    return json.loads(cmd)


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """`--name=value` / bare `--name` arguments, by name (a flag may repeat)."""
    flags: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags.setdefault(name, []).append(value)
    return flags


def final_env(parsed: tuple[list[Instruction], list[Stage]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final_stage_instructions(parsed):
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {instruction.value!r}: use the KEY=value form"
                env[key] = value
    return env


def parse_size(value: str | int) -> int:
    """Bytes in a compose byte value (`1gb`, `512m`) or a Kubernetes quantity (`1Gi`)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", str(value).strip())
    assert match, f"not a size: {value!r}"
    number, unit = float(match.group(1)), match.group(2)
    binary = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20,
              "g": 2**30, "gb": 2**30, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    factor = binary.get(unit) or decimal.get(unit) or binary.get(unit.lower())
    assert factor, f"unknown size unit in {value!r}"
    return int(number * factor)


def parse_seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, f"not a duration: {value!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name in (KUSTOMIZATION, ADAPTER_VALUES):
            continue
        for doc in load_yaml_docs(path):
            yield path.name, doc


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc for _, doc in k8s_objects()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in docker/kubernetes, got {found}"
    return found[0]


def triton_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "triton"]
    return container


def exit_timeout_s(parsed: tuple[list[Instruction], list[Stage]]) -> int:
    (value,) = flag_values(image_cmd(parsed))["exit-timeout-secs"]
    return int(value)


@pytest.fixture(scope="module")
def model_config() -> model_config_pb2.ModelConfig:
    """config.pbtxt through Triton's own protobuf schema (a typo'd field fails here)."""
    text = (MODEL_DIR / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def project_version() -> str:
    """[project] version of pyproject.toml (no tomllib: the project supports Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def pinned(requirements: Path, name: str) -> str:
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            if req.name.lower() == name.lower():
                (spec,) = req.specifier
                assert spec.operator == "==", f"{name} must be pinned exactly in {requirements}"
                return spec.version
    raise AssertionError(f"{name} is not pinned in {requirements}")


def tool(name: str) -> str:
    """A CLI from this environment (next to the running Python) or PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"`{name}` is not installed: run `scripts/setup.sh` (requirements/dev.txt)")
    return found


# --------------------------------------------------------------------------- Dockerfile


def hadolint(dockerfile: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--no-fail", "-f", "json",
         str(dockerfile)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_hadolint_finds_nothing() -> None:
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(
        f"docker/Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    """The same config flags a floating tag from an untrusted registry: the lint is live."""
    text = DOCKERFILE.read_text()
    bad = re.sub(r"^FROM nvcr\.io/\S+", "FROM docker.io/library/ubuntu:latest", text,
                 count=1, flags=re.MULTILINE)
    assert bad != text
    (tmp_path / "Dockerfile").write_text(bad)
    codes = {f["code"] for f in hadolint(tmp_path / "Dockerfile")}
    assert {"DL3007", "DL3026"} <= codes, codes


def test_hadolint_ignores_say_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[index - 1].strip() if index else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"docker/Dockerfile:{index + 1}: put the reason for `{line.strip()}` in a "
                "comment line directly above it"
            )


def test_base_image_is_the_tested_triton_release_or_newer(dockerfile) -> None:
    _, stages = dockerfile
    stage_names = {s.name for s in stages if s.name}
    external = {s.image for s in stages if s.image not in stage_names}
    assert len(external) == 1, f"one base image expected, got {external}"
    (image,) = external
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", image)
    assert match, f"base image must be NVIDIA's tritonserver <yy.mm>-py3 image, got {image}"
    release = (int(match.group(1)), int(match.group(2)))
    pytriton = pinned(REPO / "requirements" / "triton.txt", "nvidia-pytriton")
    assert pytriton in PYTRITON_TRITON_RELEASE, (
        f"nvidia-pytriton {pytriton}: add the Triton release it carries to "
        "PYTRITON_TRITON_RELEASE and move docker/Dockerfile to it (or newer)"
    )
    tested = PYTRITON_TRITON_RELEASE[pytriton]
    assert release >= tested, (
        f"docker/Dockerfile uses Triton {image}, older than release "
        f"{tested[0]}.{tested[1]:02d} that the tests run (nvidia-pytriton {pytriton})"
    )
    assert importlib.metadata.version("nvidia-pytriton") == pytriton


def test_engine_pins_install_on_the_image_python(dockerfile) -> None:
    """Every pin of requirements/engine.txt must support the container's Python.

    Checked offline from the Requires-Python of the installed distribution of the same
    version; a pin that only applies to the container's Python (an environment marker)
    and is not installed here cannot be checked offline and is skipped.
    """
    _, stages = dockerfile
    (image,) = {s.image for s in stages if s.image.startswith("nvcr.io/")}
    yy, mm = (int(x) for x in re.search(r":(\d\d)\.(\d\d)-", image).groups())
    assert (yy, mm) in CONTAINER_PYTHON, f"add the Python version of {image} to CONTAINER_PYTHON"
    python = CONTAINER_PYTHON[(yy, mm)]
    environment = {
        "python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
        "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
        "platform_machine": "x86_64", "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    problems = []
    for line in (REPO / "requirements" / "engine.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req}: pin exactly"
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != spec.version:
            continue
        requires = dist.metadata.get("Requires-Python")
        if requires and not SpecifierSet(requires).contains(python):
            problems.append(f"{req} requires Python {requires}")
    assert not problems, (
        f"requirements/engine.txt does not install on the image's Python {python} ({image}): "
        + "; ".join(problems)
        + ' (pin a version for it with a marker, e.g. `; python_version < "3.11"`)'
    )
    numpy = pinned(REPO / "requirements" / "engine.txt", "numpy")
    assert int(numpy.split(".")[0]) < 2, "the Triton 2.51 Python-backend stub needs numpy < 2"


def test_image_code_runs_on_the_image_python(dockerfile) -> None:
    """The model (and the fetch script) run on the container's Python, older than ours.

    vermin finds the minimum Python a file needs (syntax, stdlib modules and members);
    with `-t=3.10-` it fails on anything newer, such as `tomllib` or `typing.Self`.
    """
    _, stages = dockerfile
    (image,) = {s.image for s in stages if s.image.startswith("nvcr.io/")}
    yy, mm = (int(x) for x in re.search(r":(\d\d)\.(\d\d)-", image).groups())
    python = ".".join(CONTAINER_PYTHON[(yy, mm)].split(".")[:2])
    paths = [REPO / "model_repository", REPO / "scripts" / "ofa_ve_ops"]
    result = subprocess.run(
        [tool("vermin"), f"-t={python}-", "--violations", "--no-tips", "--eval-annotations",
         *(str(p) for p in paths if p.exists())],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )
    assert result.returncode == 0, (
        f"code in the image needs a newer Python than {image}'s {python}:\n{result.stdout}"
    )


def test_dependencies_come_from_setup_sh(dockerfile) -> None:
    instructions, _ = dockerfile
    runs = [i.value for i in instructions if i.keyword == "RUN"]
    assert any("scripts/setup.sh --system --profile engine" in r for r in runs)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "--system)" in setup and re.search(r"^\s*engine\)", setup, re.MULTILINE)


def test_final_stage_is_non_root_and_ships_the_model(dockerfile) -> None:
    instructions, stages = dockerfile
    final = final_stage_instructions(dockerfile)
    users = [i.value for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "run as a non-root user"
    uid = int(users[-1].split(":")[0])
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid
    copies = [i.value.split() for i in final if i.keyword == "COPY"]
    assert ["model_repository/", "model_repository/"] in copies
    workdirs = [i.value for i in instructions if i.keyword == "WORKDIR"]
    repo_in_image = f"{workdirs[-1].rstrip('/')}/model_repository"
    assert flag_values(image_cmd(dockerfile))["model-repository"] == [repo_in_image]
    assert stages[-1].name == "runtime"
    labels = " ".join(i.value for i in instructions if i.keyword == "LABEL")
    assert f'org.opencontainers.image.version="{project_version()}"' in labels


def test_ports_agree_everywhere(dockerfile, compose, monkeypatch: pytest.MonkeyPatch) -> None:
    from ofa_ve_ops import serve, triton_runtime

    code_ports = triton_runtime.Ports()._asdict()
    assert code_ports == TRITON_PORTS, "ofa_ve_ops.triton_runtime changed Triton's ports"
    for name in TRITON_PORTS:
        monkeypatch.delenv(f"OFA_VE_{name.upper()}_PORT", raising=False)
    args = serve.parse_args([])
    serve_ports = {name: getattr(args, f"{name}_port") for name in TRITON_PORTS}
    assert serve_ports == TRITON_PORTS, "ofa_ve_ops.serve (`make serve`) uses other ports"

    exposed = {int(p.split("/")[0]) for p in one(final_stage_instructions(dockerfile),
                                                 "EXPOSE").value.split()}
    assert exposed == set(TRITON_PORTS.values())
    flags = flag_values(image_cmd(dockerfile))
    assert {name: int(flags[f"{name}-port"][0]) for name in TRITON_PORTS} == TRITON_PORTS

    for service in ("triton", "triton-cpu"):
        published = {
            int(host): int(container)
            for host, container in (p.split(":") for p in compose["services"][service]["ports"])
        }
        assert published == {p: p for p in TRITON_PORTS.values()}, service

    container_ports = {p["name"]: p["containerPort"] for p in triton_container()["ports"]}
    assert container_ports == TRITON_PORTS
    for name in ("ofa-visual-entailment", "ofa-visual-entailment-headless"):
        for port in k8s_object("Service", name)["spec"]["ports"]:
            assert port["port"] == TRITON_PORTS[port["name"]], (name, port)
            assert port["targetPort"] in (port["name"], TRITON_PORTS[port["name"]]), (name, port)
    annotations = k8s_object("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == TRITON_PORTS["metrics"]


def test_ports_match_the_interface_doc() -> None:
    candidates = [REPO / "docs" / "interface.md", REPO.parent / "shared" / "docs" / "interface.md"]
    docs = [p for p in candidates if p.is_file()]
    if not docs:
        pytest.skip("the interface doc (docs/interface.md or ../shared/docs/) is not here")
    text = " ".join(docs[0].read_text().split())
    match = re.search(r"HTTP (\d+), gRPC (\d+), metrics (\d+)", text)
    assert match, f"{docs[0]} no longer states the ports as 'HTTP n, gRPC n, metrics n'"
    assert tuple(int(p) for p in match.groups()) == tuple(TRITON_PORTS.values())


def test_server_flags_match_the_tested_runtime(dockerfile) -> None:
    """The image starts tritonserver with the flags the test suite's servers use."""
    from ofa_ve_ops import triton_runtime

    runtime = triton_runtime.TritonRuntime(
        root=Path("/triton"), wheel_libs=Path("/libs"), python_bin_dir=Path("/bin")
    )
    tested = flag_values(
        triton_runtime.server_command(runtime, Path("/models"), gpu=True)
    )
    image = flag_values(image_cmd(dockerfile))
    for name in ("strict-readiness", "disable-auto-complete-config", "backend-config",
                 "http-port", "grpc-port", "metrics-port"):
        assert sorted(image.get(name, [])) == sorted(tested[name]), name
    assert image["strict-readiness"] == ["true"]
    assert exit_timeout_s(dockerfile) >= int(tested["exit-timeout-secs"][0])
    assert "pinned-memory-pool-byte-size" not in image, "the image is for GPU hosts"


def test_server_flags_exist_in_the_tested_tritonserver(dockerfile, compose) -> None:
    """Every flag the image and compose pass is one the tested tritonserver (2.51) knows."""
    from ofa_ve_ops import triton_runtime

    runtime = triton_runtime.prepare_runtime()
    result = subprocess.run(
        [str(runtime.server), "--help"], env=triton_runtime.server_env(runtime),
        capture_output=True, text=True, timeout=120, check=False,
    )
    known = set(re.findall(r"^\s+--([a-z0-9-]+)", result.stdout + result.stderr, re.MULTILINE))
    assert len(known) > 50, f"could not read tritonserver --help: {result.stderr[-2000:]}"
    commands = [image_cmd(dockerfile)] + [
        service["command"] for service in compose["services"].values()
        if service.get("command") and service["command"][0] == "tritonserver"
    ]
    for command in commands:
        unknown = sorted(set(flag_values(command)) - known)
        assert not unknown, f"tritonserver 2.51 has no {unknown}"


def test_healthcheck_uses_triton_readiness(dockerfile) -> None:
    healthcheck = one(final_stage_instructions(dockerfile), "HEALTHCHECK").value
    options, _, cmd = healthcheck.partition(" CMD ")
    args = json.loads(cmd)
    assert args[0] == "curl" and "-f" in "".join(a for a in args if a.startswith("-f"))
    (url,) = [a for a in args if a.startswith("http")]
    assert url == f"http://127.0.0.1:{TRITON_PORTS['http']}/v2/health/ready"
    start_period = re.search(r"--start-period=(\w+)", options)
    assert start_period and parse_seconds(start_period.group(1)) >= 60, "allow for model load"


WEIGHTS_IN_REPOSITORY = "model_repository/ofa_visual_entailment/1/weights"
"""Where the image holds the weights: version 1's folder, where the model loads them."""


def test_weights_go_in_the_version_folder(dockerfile) -> None:
    """Baked (MODEL_FETCH=1) or mounted, the weights are in the served repository's
    version folder; nothing sets OFA_VE_MODEL_DIR (it would override the folders)."""
    instructions, _ = dockerfile
    assert "OFA_VE_MODEL_DIR" not in final_env(dockerfile)
    assert all(e["name"] != "OFA_VE_MODEL_DIR" for e in triton_container().get("env", []))
    copies = [i.value.split() for i in final_stage_instructions(dockerfile)
              if i.keyword == "COPY" and i.value.startswith("--from=weights")]
    assert copies and copies[0][-1] == WEIGHTS_IN_REPOSITORY
    workdirs = [i.value for i in instructions if i.keyword == "WORKDIR"]
    repository = flag_values(image_cmd(dockerfile))["model-repository"][0]
    assert f"{workdirs[-1].rstrip('/')}/{WEIGHTS_IN_REPOSITORY}".startswith(repository + "/")
    fetch_args = {i.value.split("=")[0] for i in instructions if i.keyword == "ARG"}
    assert "MODEL_FETCH" in fetch_args
    # A checkout's own weights (make serve's link, or a copy) never reach the context.
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "model_repository/*/*/weights" in ignored


def test_fetch_script_has_the_cli_the_image_uses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ofa_ve_ops.fetch_model", "--help"], capture_output=True,
        text=True, timeout=120, check=False, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "--cache-dir" in result.stdout


def test_build_context_holds_what_the_image_copies(dockerfile) -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    context = set(exclude_paths(str(REPO), patterns, dockerfile="docker/Dockerfile"))
    instructions, _ = dockerfile
    for instruction in instructions:
        if instruction.keyword != "COPY" or instruction.value.startswith("--from"):
            continue
        for source in instruction.value.split()[:-1]:
            if source.startswith("--"):
                continue
            source = source.rstrip("/")
            assert source in context, f"COPY {source}: not in the build context (.dockerignore)"
    for excluded in (".venv", ".git", ".cache", "tests", "client"):
        assert not any(p == excluded or p.startswith(excluded + "/") for p in context), excluded
    assert not any("__pycache__" in p for p in context)
    size = sum((REPO / p).stat().st_size for p in context if (REPO / p).is_file())
    assert size < 20 * 2**20, f"build context is {size / 2**20:.1f} MiB: exclude the bulk"


# --------------------------------------------------------------------------- the code


def test_model_name_matches_config(model_config) -> None:
    name = model_config.name
    assert name == MODEL_DIR.name == "ofa_visual_entailment"
    assert model_config.backend == "python"
    texts = [p.read_text() for p in [COMPOSE, DOCS, *K8S_DIR.glob("*.yaml")]]
    for text in texts:
        for other in re.findall(r"/v2/models/([\w.-]+)", text):
            assert other == name, f"/v2/models/{other}: the model is {name}"
        for other in re.findall(r'model="([^"]+)"', text):
            assert other == name, f'model="{other}": the model is {name}'


def test_env_vars_exist_in_the_code(dockerfile, compose) -> None:
    deployed = set(final_env(dockerfile))
    for service in compose["services"].values():
        deployed |= set(service.get("environment") or {})
    for container in k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]:
        deployed |= {e["name"] for e in container.get("env", [])}
    ours = {name for name in deployed if name.startswith("OFA_VE_")}
    assert "OFA_VE_MODEL_DIR" not in ours, "weights go in the version folder, not a variable"
    assert ours, "the deployment sets no variable of ours at all"
    code = "\n".join(
        p.read_text()
        for p in [*(REPO / "model_repository").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
    )
    missing = sorted(name for name in ours if name not in code)
    assert not missing, f"set by the deployment but read nowhere in the code: {missing}"


# --------------------------------------------------------------------------- compose


def test_compose_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_gpu_and_cpu_services(dockerfile, compose) -> None:
    _, stages = dockerfile
    services = compose["services"]
    gpu, cpu = services["triton"], services["triton-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device.get("count", 1) >= 1
    assert "deploy" not in cpu
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    cmd = image_cmd(dockerfile)
    assert "command" not in gpu, "the GPU service runs the image's CMD"
    assert cpu["command"] == [
        *cmd, "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"
    ]
    stage_names = {s.name for s in stages}
    for name, service in services.items():
        assert service["build"]["target"] in stage_names, name
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
    for service in (gpu, cpu):
        assert service["build"]["target"] == stages[-1].name
        assert service["image"] == f"ofa-visual-entailment-triton:{project_version()}"
        # The Python backend's shared memory: several instances x 16 MiB regions.
        assert parse_size(service["shm_size"]) >= 256 * 2**20
        assert parse_seconds(service["stop_grace_period"]) > exit_timeout_s(dockerfile)
        assert service["depends_on"]["model-fetch"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_mounts_the_fetched_weights_on_the_version_folder(dockerfile, compose) -> None:
    """model-fetch fills the cache volume and copies the model directory into the
    weights volume, which the servers mount read-only on version 1's weights folder."""
    services = compose["services"]
    assert {"model-cache", "model-weights"} <= set(compose["volumes"])
    fetch = services["model-fetch"]
    mounts = {v["source"]: v for v in fetch["volumes"]}
    script = fetch["command"][-1]
    assert "-m ofa_ve_ops.fetch_model --cache-dir " + mounts["model-cache"]["target"] in script
    assert f'cp -RLu "$$model_dir/." {mounts["model-weights"]["target"]}/' in script
    instructions, _ = dockerfile
    workdirs = [i.value for i in instructions if i.keyword == "WORKDIR"]
    for name in ("triton", "triton-cpu"):
        service = services[name]
        assert "OFA_VE_MODEL_DIR" not in (service.get("environment") or {})
        (mount,) = [v for v in service["volumes"] if v["source"] == "model-weights"]
        assert mount["target"] == f"{workdirs[-1].rstrip('/')}/{WEIGHTS_IN_REPOSITORY}"
        assert mount["read_only"] is True


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_match_the_api_schemas(version: str) -> None:
    checked = 0
    for filename, doc in k8s_objects():
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{filename} {doc['kind']}: {path}: {error.message} (Kubernetes {version})")
        checked += 1
    assert checked >= 6


def test_every_manifest_is_applied_by_kustomize() -> None:
    kustomization = yaml.safe_load((K8S_DIR / KUSTOMIZATION).read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {KUSTOMIZATION, ADAPTER_VALUES}
    assert listed == present
    namespace = k8s_object("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    (image,) = kustomization["images"]
    name, _, tag = triton_container()["image"].partition(":")
    assert image["name"] == name == "ofa-visual-entailment-triton"
    # Kubernetes runs the image with the weights baked in (docs/deployment.md).
    assert image["newTag"] == tag == f"{project_version()}-weights"


def test_kustomize_renders_what_gets_applied() -> None:
    """`kubectl kustomize` (what `kubectl apply -k` runs) and the schemas on its output."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the source manifests are validated above)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kustomization = yaml.safe_load((K8S_DIR / KUSTOMIZATION).read_text())
    source = sorted((d["kind"], d["metadata"]["name"]) for _, d in k8s_objects())
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == source
    (image,) = kustomization["images"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["kind"]
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == f"{image['newName']}:{image['newTag']}"
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def test_probes_and_graceful_shutdown(dockerfile) -> None:
    container = triton_container()
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    expected = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                "livenessProbe": "/v2/health/live"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in TRITON_HEALTH_PATHS
        assert get["port"] in ("http", TRITON_PORTS["http"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "allow for model load"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    needed = int(sleep[1]) + exit_timeout_s(dockerfile) + 5
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_gpu_and_shared_memory() -> None:
    container = triton_container()
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    dshm = volumes[shm["name"]]["emptyDir"]
    assert dshm["medium"] == "Memory"
    # Memory-backed emptyDir pages count against the container's memory limit.
    assert parse_size(dshm["sizeLimit"]) >= 256 * 2**20
    assert parse_size(resources["limits"]["memory"]) > (
        parse_size(resources["requests"]["memory"]) + parse_size(dshm["sizeLimit"]) // 2
    )
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "HOME=/tmp"


def test_services_pdb_and_hpa_target_the_deployment() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    for _, doc in k8s_objects():
        if doc["kind"] == "Service":
            assert doc["spec"]["selector"].items() <= pod_labels.items(), doc["metadata"]["name"]
        if doc["kind"] == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    headless = k8s_object("Service", "ofa-visual-entailment-headless")["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert "grpc" in {p["name"] for p in headless["ports"]}
    hpa = k8s_object("HorizontalPodAutoscaler")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pdb = k8s_object("PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] > int(pdb.get("maxUnavailable", 1)), "a drain must leave a pod"


def test_hpa_metric_is_served_by_the_adapter_rule(model_config) -> None:
    (metric,) = k8s_object("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    values = yaml.safe_load((K8S_DIR / ADAPTER_VALUES).read_text())
    rules = [r for r in values["rules"]["custom"]
             if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert len(rules) == 1, "prometheus-adapter must serve the metric the HPA asks for"
    (rule,) = rules
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}
    }
    query = rule["metricsQuery"]
    assert re.search(r"rate\(nv_inference_queue_duration_us\{<<\.LabelMatchers>>", query)
    assert re.search(r"rate\(nv_inference_request_success\{<<\.LabelMatchers>>", query)
    assert query.count("sum by (<<.GroupBy>>)") == 2
    assert set(re.findall(r'model="([^"]+)"', query + rule["seriesQuery"])) == {
        model_config.name
    }
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")


def test_servicemonitor_scrapes_the_metrics_port() -> None:
    """No schema for this CRD here (see CRD_KINDS): check what it must get right."""
    monitor = k8s_object("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
    assert endpoint["path"] == "/metrics"
    assert parse_seconds(endpoint["scrapeTimeout"]) < parse_seconds(endpoint["interval"])
    matched = [
        doc for _, doc in k8s_objects()
        if doc["kind"] == "Service" and selector.items() <= doc["metadata"]["labels"].items()
        and endpoint["port"] in {p["name"] for p in doc["spec"]["ports"]}
    ]
    assert [d["metadata"]["name"] for d in matched] == ["ofa-visual-entailment"], (
        "exactly one Service may expose the scraped port, or pods are scraped twice"
    )
    (port,) = [p for p in matched[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["port"] == TRITON_PORTS["metrics"]


# --------------------------------------------------------------------------- docs


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[\w-]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_docs_commands_agree_with_the_files(dockerfile, compose) -> None:
    instructions, stages = dockerfile
    blocks = "\n".join(code_blocks(DOCS.read_text()))
    assert blocks, "docs/deployment.md has no command blocks"
    for path in set(re.findall(r"(?<![\w/.-])((?:docker|scripts|docs)/[\w./-]*[\w/])", blocks)):
        assert (REPO / path).exists(), f"docs/deployment.md names {path}, which does not exist"
    args = {i.value.split("=")[0] for i in instructions if i.keyword == "ARG"}
    for arg in re.findall(r"--build-arg (\w+)=", blocks):
        assert arg in args, f"--build-arg {arg}: no such ARG in docker/Dockerfile"
    for target in re.findall(r"--target[ =](\S+)", blocks):
        assert target in {s.name for s in stages}, f"--target {target}: no such stage"
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    for profile in re.findall(r"--profile (\S+)", blocks):
        assert profile in profiles, f"--profile {profile}: no such compose profile"

    version = project_version()
    for tag in re.findall(r"ofa-visual-entailment-triton:([\w.${}-]+)", blocks):
        assert tag.startswith(version), f"image tag {tag}: the project version is {version}"
    kustomization = yaml.safe_load((K8S_DIR / KUSTOMIZATION).read_text())
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" in blocks, "docs must push what k8s pulls"

    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_objects()}
    kinds = {"deployment": "Deployment", "deploy": "Deployment", "svc": "Service",
             "service": "Service", "hpa": "HorizontalPodAutoscaler",
             "pdb": "PodDisruptionBudget", "servicemonitor": "ServiceMonitor"}
    for short, name in re.findall(r"\b(deployment|deploy|svc|service|hpa|pdb|servicemonitor)/"
                                  r"([\w-]+)", blocks):
        assert (kinds[short], name) in names, f"{short}/{name}: no such object in the manifests"
    for namespace in re.findall(r"(?:-n|--namespace) (\S+)", blocks):
        assert namespace in {kustomization["namespace"], "monitoring"}, namespace

    for port, path in re.findall(r"(?:localhost|127\.0\.0\.1):(\d+)(/[\w/.-]*)", blocks):
        assert int(port) in TRITON_PORTS.values(), port
        if path.startswith("/v2/health/"):
            assert path in TRITON_HEALTH_PATHS, path
    metric = k8s_object("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in blocks, "docs must show how to read the autoscaling metric"
    assert "kubectl apply -k docker/kubernetes" in blocks
    assert "hadolint" in blocks or "test_deployment_static" in blocks


def test_admin_apis_are_closed_wherever_the_image_runs(dockerfile, compose) -> None:
    """The image starts tritonserver through ofa_ve_ops.admin_access (which appends the
    restricted-protocol flags or refuses to start); compose cannot start without a key;
    the Deployment reads it from a mounted Secret, at the path it tells the image."""
    from ofa_ve_ops import admin_access

    entrypoint = json.loads(one(final_stage_instructions(dockerfile), "ENTRYPOINT").value)
    module_at = {arg: i for i, arg in enumerate(entrypoint) if arg.startswith("ofa_ve_ops.")}
    assert module_at["ofa_ve_ops.admin_access"] < module_at["ofa_ve_ops.stub_watchdog"]
    for name in ("triton", "triton-cpu"):
        value = compose["services"][name]["environment"][admin_access.KEY_ENV]
        assert value.startswith("${OFA_VE_ADMIN_KEY:?"), (name, value)  # required
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = Path(env[admin_access.KEY_FILE_ENV])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == key_file.parent]
    assert mounts[name].get("readOnly") is True
    secret = volumes[name]["secret"]
    assert secret["secretName"] and [i["path"] for i in secret["items"]] == [key_file.name]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert admin_access.OPEN_ENV not in env
