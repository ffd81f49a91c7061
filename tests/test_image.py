"""The image and its CI check cannot drift apart; the constraints file pins what the package needs.

CI has no container engine: .ci/wheel_smoke.py runs deploy/Dockerfile's own steps (the RUN lines
tagged `# ci: run`, ENTRYPOINT + CMD, HEALTHCHECK) in a fresh virtualenv. These tests hold the
Dockerfile to what that runner can reproduce, and the runner to refusing what it cannot.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from nextclick.flows.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def load_smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheel_smoke", REPO / ".ci" / "wheel_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wheel_smoke"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


smoke = load_smoke()
IMAGE = smoke.parse(DOCKERFILE)


def tagged_runs(stage: object) -> list[str]:
    return [i.text for i in stage.instructions if i.keyword == "RUN" and i.tagged]  # type: ignore[attr-defined]


def test_ci_runs_the_dockerfiles_own_build_and_pinned_installs_in_order() -> None:
    build, runtime = IMAGE.stages
    # Both stages on the same base: the tag, or tag@digest once pinned where a registry is reachable (no
    # digest is written that was not resolved: deploy/README.md says how to pin it).
    assert len({s.base for s in IMAGE.stages}) == 1
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", runtime.base), runtime.base
    assert "docker buildx imagetools inspect python:3.11-slim" in DOCKERFILE
    assert tagged_runs(build) == ["pip wheel --no-cache-dir --no-deps --wheel-dir dist ."]
    deps, wheel = tagged_runs(runtime)
    assert "--requirement constraints.txt" in deps and "--constraint constraints.txt" in wheel
    # Layer order: the pinned dependencies are installed before the wheel (or any source) arrives.
    order = [(i.keyword, i.text) for i in runtime.instructions if i.keyword in ("COPY", "RUN")]
    assert order.index(("RUN", deps)) < order.index(("COPY", "--from=build /src/dist/ ./dist/"))
    assert order[0] == ("COPY", "constraints.txt ./")
    copied = " ".join(i.text for i in runtime.instructions if i.keyword == "COPY")
    assert not re.search(r"\b(flows|operators|schemas|bench|tests)\b", copied), "source in the runtime stage"


def test_the_image_carries_oci_labels_that_match_the_project() -> None:
    labels = IMAGE.labels
    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    name, _, digest = IMAGE.final.base.partition("@")
    assert labels.get("org.opencontainers.image.base.digest", "") == digest  # only a digest actually pinned
    assert labels["org.opencontainers.image.base.name"].endswith(name)


def test_the_metrics_bind_works_through_docker_run_p() -> None:
    """`docker run -p` forwards to the container's own address: a loopback bind would be unreachable."""
    args = build_parser().parse_args(IMAGE.argv[1:])
    host, _, port = args.metrics_address.rpartition(":")
    assert host in ("0.0.0.0", "[::]") and int(port) in IMAGE.expose and args.metrics_port is None


def dockerignore() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: a pattern matches the path or a parent of it."""
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hit = False
    for pattern in patterns:
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!")
        pattern = pattern[3:] if pattern.startswith("**/") else pattern
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern) and "/" not in pattern
               for p in prefixes):
            hit = not negate
    return hit


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_local() -> None:
    patterns = dockerignore()
    copied = [w for stage in IMAGE.stages for i in stage.instructions if i.keyword == "COPY"
              for w in i.flags()[1][:-1] if "from" not in i.flags()[0]]
    assert {"pyproject.toml", "README.md", "constraints.txt", "flows", "operators", "schemas"} <= set(copied)
    for source in copied:
        assert not ignored(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
    for local in (".git", ".venv", "var/state", "tests", "bench", "flows/__pycache__", "hmac.key", ".env"):
        assert ignored(local, patterns), f"{local} would be sent to the builder"


def test_the_runtime_is_non_root_and_runs_the_installed_entry_point() -> None:
    assert IMAGE.user == "10001:10001"
    assert IMAGE.entrypoint[0] in PYPROJECT["project"]["scripts"]
    args = build_parser().parse_args(IMAGE.argv[1:])  # ENTRYPOINT + CMD through the real parser
    assert args.func.__name__ == "cmd_run" and args.config == "/etc/nextclick/nextclick.toml"
    assert IMAGE.healthcheck is not None
    probe = " ".join(IMAGE.healthcheck.command)
    assert IMAGE.healthcheck.command[0] == "python" and "curl" not in probe and "wget" not in probe
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", probe)
    assert url and url.group(2) == "/healthz"
    port = int(args.metrics_address.rpartition(":")[2])
    assert int(url.group(1)) == port and port in IMAGE.expose


@pytest.mark.parametrize("text, reason", [
    ("FROM python:3.11-slim\nRUN pip install requests\nENTRYPOINT [\"x\"]\n", "installs Python packages"),
    ("FROM python:3.11-slim\nRUN apt-get update && python -m pip install x\nENTRYPOINT [\"x\"]\n", "not tagged"),
    ("FROM python:3.11-slim\n# ci: run\nRUN pip install /wheels/x.whl\nENTRYPOINT [\"x\"]\n", "relative to WORKDIR"),
    ("FROM python:3.11-slim\nADD x.tar.gz /\nENTRYPOINT [\"x\"]\n", "ADD is not something"),
    ("FROM python:3.11-slim\n# ci: run\nCOPY a b\nENTRYPOINT [\"x\"]\n", "tags a COPY"),
    ("FROM python:3.11-slim\nENTRYPOINT nextclick run\n", "JSON array form"),
    ("FROM python:3.11-slim\nRUN true\n", "no ENTRYPOINT"),
])
def test_the_runner_refuses_what_it_would_not_reproduce(text: str, reason: str) -> None:
    with pytest.raises(smoke.DockerfileError, match=reason):
        smoke.parse(text)


def test_the_runner_maps_container_paths_and_ports(tmp_path: Path) -> None:
    args = smoke.map_args(["--config", "/etc/nextclick/nextclick.toml", "--metrics-port", "9464",
                           "--metrics-address", "0.0.0.0:9464",
                           "import u; u.urlopen('http://127.0.0.1:9464/healthz')"], tmp_path, {9464: 40001})
    assert args == ["--config", str(tmp_path / "etc/nextclick/nextclick.toml"), "--metrics-port", "40001",
                    "--metrics-address", "0.0.0.0:40001", "import u; u.urlopen('http://127.0.0.1:40001/healthz')"]
    continued = smoke.instructions("FROM a AS b\n# ci: run\nRUN one \\\n  # inside\n  two\nCMD [\"x\"]\n")
    assert [(i.keyword, i.text, i.tagged) for i in continued] == [
        ("FROM", "a AS b", False), ("RUN", "one two", True), ("CMD", '["x"]', False)]


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not an exact pin"
            out[canonical(name)] = version.strip()
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_runtime_dependency_and_nothing_else() -> None:
    pinned = pins()
    runtime = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for req in runtime:
        assert canonical(req.name) in pinned, f"{req.name} is not pinned in constraints.txt (bash deploy/lock.sh)"
        assert req.specifier.contains(pinned[canonical(req.name)]), f"{req.name}: the pin breaks {req.specifier}"
    # Their own dependencies too (as installed here), and no extra: dev/demo/bench stay unpinned.
    closure: set[str] = set()
    todo = [r.name for r in runtime]
    while todo:
        name = canonical(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    assert closure == set(pinned), f"constraints.txt is stale (bash deploy/lock.sh): {closure ^ set(pinned)}"


def test_ci_installs_with_the_constraints_and_runs_the_smoke_after_the_tests() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "--constraint constraints.txt -e '.[dev]'" in ci
    assert ci.index(".venv/bin/pytest") < ci.index(".ci/wheel_smoke.py")
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"nextclick", "nextclick.*"} == set(include)  # one installed package; bench/ stays out
