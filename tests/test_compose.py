"""deploy/docker-compose.yml, checked without a Docker engine.

The compose file is parsed and its wiring checked against the files it mounts: the
twin's build and hardening match the Dockerfile, Prometheus's configuration (the one
in deploy/prometheus/, with the rule file the Helm chart also carries) passes
`promtool check config` and scrapes the twin's service and port, Grafana's
provisioning points at the Prometheus service and at the mounted dashboards. The
twin's environment is interpolated as Compose does and handed, together with the
image's own ENV, to the daemon's settings loader: embedded by default, external
with the minikube example.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgmock_twin.settings import Settings
from tests.support.environment import daemon_settings
from tests.test_dockerfile import env_of, image_user, runtime

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMTOOL = "/usr/bin/promtool"
TWIN = "bgmock-twin"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return dict(services[name])


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if op == ":-":
            return variables.get(name) or default
        if op == "-":
            return variables.get(name, default)
        return variables.get(name, "")
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", one, value)


def bind_mounts(spec: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Container path -> (host path, options) of the service's bind mounts."""
    mounts = {}
    for volume in spec.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = ((DEPLOY / source).resolve(), ",".join(options))
    return mounts


def named_volumes(spec: dict[str, Any]) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in spec.get("volumes", [])
            if not v.startswith((".", "/"))}


def test_the_stack_has_the_twin_prometheus_grafana_and_an_optional_kafka() -> None:
    services = compose()["services"]
    assert {TWIN, "prometheus", "grafana", "kafka"} <= set(services)
    for name in (TWIN, "prometheus", "grafana"):
        assert "profiles" not in services[name], f"{name} must start by default"
    assert services["kafka"]["profiles"] == ["kafka"]
    assert services[TWIN]["depends_on"]["kafka"]["required"] is False
    declared = set(compose()["volumes"])
    for name, spec in services.items():
        assert set(named_volumes(spec).values()) <= declared, name
        image = spec["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image


def test_every_port_is_published_on_loopback_only() -> None:
    for name, spec in compose()["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_twin_is_built_from_the_dockerfile_and_hardened_like_the_chart() -> None:
    twin = service(TWIN)
    assert (DEPLOY / twin["build"]["context"]).resolve() == ROOT
    assert (ROOT / twin["build"]["dockerfile"]).is_file()
    uid, gid = image_user()
    assert twin["user"] == f"{uid}:{gid}"
    assert twin["read_only"] is True
    assert twin["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in twin["security_opt"]
    assert [t.split(":")[0] for t in twin["tmpfs"]] == ["/tmp"]
    assert named_volumes(twin) == {"/data": "twin-data"}
    # The ledger of the image lives on that volume.
    assert env_of(runtime())["TWIN_DATABASE_URL"] == "sqlite:////data/twin.db"
    grace = float(re.fullmatch(r"(\d+)s", twin["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > Settings.model_fields["shutdown_grace_seconds"].default
    (published,) = twin["ports"]
    assert interpolate(published, {}).endswith(":" + env_of(runtime())["TWIN_LISTEN_PORT"])


def twin_environment(variables: dict[str, str]) -> dict[str, str]:
    """What the twin's process sees: the image's ENV, then compose's environment."""
    env = env_of(runtime())
    env.pop("PATH")
    for name, value in service(TWIN)["environment"].items():
        env[name] = interpolate(str(value), variables)
    return env


def test_docker_compose_up_runs_the_twin_embedded(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    settings = daemon_settings(twin_environment({}), monkeypatch, tmp_path)
    assert settings.embedded
    assert settings.listen_host == "0.0.0.0"
    assert settings.control_token is not None
    assert settings.control_token.get_secret_value() == "local-dev-token-change-me"
    assert settings.kafka_bootstrap_servers is None
    assert settings.load_rate_per_second > 0, "dashboards need traffic"


def test_the_kafka_profile_carries_the_emulators_events(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    kafka = service("kafka")["environment"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split("//", 1)[1]
    settings = daemon_settings(twin_environment({"KAFKA_BOOTSTRAP_SERVERS": advertised}),
                               monkeypatch, tmp_path)
    assert settings.embedded
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert kafka["KAFKA_NUM_PARTITIONS"] == 3, "BGMock's topics have 3 partitions"


def test_the_minikube_env_file_points_at_the_seeds_node_ports(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    variables = {}
    for line in (DEPLOY / "k8s" / "minikube-outside.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            variables[name] = value
    settings = daemon_settings(twin_environment(variables), monkeypatch, tmp_path)
    assert not settings.embedded
    ports = {url.rsplit(":", 1)[1] for url in (settings.bank_a_url, settings.bank_b_url,
                                               settings.clearing_url) if url}
    assert ports == {"30081", "30082", "30083"}


def test_prometheus_loads_the_shared_config_and_rules(tmp_path: Path) -> None:
    prometheus = service("prometheus")
    mounts = bind_mounts(prometheus)
    config_dir, options = mounts["/etc/prometheus"]
    assert config_dir == DEPLOY / "prometheus" and options == "ro"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    # The rules are the single source the Helm chart's PrometheusRule carries too.
    for rule_file in config["rule_files"]:
        assert (config_dir / rule_file).resolve().parent == \
            (ROOT / "helm" / "bgmock-twin" / "files" / "rules").resolve()
    # The twin is scraped by its service name and container port.
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]
    assert f"{TWIN}:{env_of(runtime())['TWIN_LISTEN_PORT']}" in targets
    # promtool checks the configuration and the rule files it loads.
    shutil.copytree(config_dir, tmp_path / "prometheus")
    result = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = service("grafana")
    mounts = bind_mounts(grafana)
    provisioning, options = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "grafana" / "provisioning" and options == "ro"
    assert (provisioning / "dashboards").is_dir() and (provisioning / "datasources").is_dir()
    # The dashboard provider reads the mounted dashboards.
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    (path,) = {p["options"]["path"] for p in providers}
    dashboards, options = mounts[path]
    assert dashboards == ROOT / "grafana" / "dashboards" and options == "ro"
    assert sorted(dashboards.glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (dashboards / home[len(path) + 1:]).is_file()
    # The data source is the compose Prometheus.
    sources = [s for f in sorted((provisioning / "datasources").glob("*.y*ml"))
               for s in yaml.safe_load(f.read_text())["datasources"]]
    urls = {s["url"] for s in sources if s["type"] == "prometheus"}
    published = {p.rsplit(":", 1)[1] for p in service("prometheus")["ports"]}
    assert urls == {f"http://prometheus:{port}" for port in published}
