"""The Helm chart, proven with the real Helm engine (helm_python binds Helm v4's Go SDK).

The chart is rendered for its default values, for a fully loaded set (every optional
resource on) and for the example values in deploy/k8s/; it is linted, every manifest
is validated against the Kubernetes schemas (kubernetes-validate, offline, strict),
the Prometheus Operator resources by their structure, the alert rules with promtool,
and the dashboards byte for byte against grafana/dashboards/. The rendered container
environment is resolved the way the kubelet does and handed to the daemon's own
settings loader, so a chart that renders but would not start fails here.

One source of truth: files/dashboards and files/rules inside the chart are symlinks to
grafana/dashboards and deploy/prometheus/rules; Helm's loader and `helm package`
resolve them (proven below).

The `config` section of values.schema.json is derived from bgmock_twin/settings/, and
the alert names `prometheusRule.disabledAlerts` accepts from deploy/prometheus/rules.
After adding a setting or an alert run `.venv/bin/python tests/test_helm_chart.py --update-schema`.
"""

from __future__ import annotations

import base64
import decimal
import enum
import functools
import json
import re
import subprocess
import sys
import tarfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import SecretStr

from bgmock_twin.api.simulation_routes import SimulationRequest
from bgmock_twin.settings import Settings
from tests.support.environment import daemon_settings, env_name
from tests.support.helm import CHART

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
EXAMPLES = ROOT / "deploy" / "k8s"
PROMTOOL = "/usr/bin/promtool"
RELEASE, NAMESPACE = "twin", "bgmock"
FULLNAME = "twin-bgmock-twin"
# kubernetes-validate re-reads its 2 MB schema files on every call; they never change.
kubernetes_validate.utils.schema_contents = functools.cache(
    kubernetes_validate.utils.schema_contents)
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())

# Settings the chart sets from its structured values (or the Secret); every other
# setting is a `config` key.
CHART_MANAGED = frozenset({
    "TWIN_MODE", "TWIN_LISTEN_HOST", "TWIN_LISTEN_PORT", "TWIN_INSTANCE_ID",
    "TWIN_CONTROL_TOKEN", "TWIN_ALLOW_UNAUTHENTICATED", "TWIN_DATABASE_URL",
    "BANK_A_URL", "BANK_B_URL", "CLEARING_SERVICE_URL",
    "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_GROUP_ID", "DB_BANK_A", "DB_BANK_B", "DB_SWITCH",
    "TWIN_EMULATOR_DB_BANK_A", "TWIN_EMULATOR_DB_BANK_B", "TWIN_EMULATOR_DB_SWITCH",
})
POSITIVE_MONEY = r"^([0-9]*[1-9][0-9]*(\.[0-9]{1,2})?|0+\.([1-9][0-9]?|0[1-9]))$"
MONEY = r"^[0-9]+(\.[0-9]{1,2})?$"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


# --- the config schema, derived from the daemon's settings -------------------------


def config_schema() -> dict[str, Any]:
    """JSON schema of `config`: every setting the chart does not manage, its bounds."""
    props: dict[str, Any] = {}
    for field in Settings.model_fields.values():
        env = env_name(field)
        if env in CHART_MANAGED:
            continue
        ann = field.annotation
        prop: dict[str, Any]
        if isinstance(ann, type) and issubclass(ann, enum.Enum):
            prop = {"enum": [member.value for member in ann]}
        elif ann is bool:
            prop = {"type": "boolean"}
        elif ann is int:
            prop = {"type": "integer"}
        elif ann is float:
            prop = {"type": "number"}
        elif ann is decimal.Decimal:
            # Money is a string in values, never a float; the daemon checks its bounds.
            positive = any(isinstance(m, Gt) and m.gt == 0 for m in field.metadata)
            prop = {"type": "string", "pattern": POSITIVE_MONEY if positive else MONEY}
        elif ann is str:
            prop = {"type": "string"}
        elif typing.get_origin(ann) is list:
            prop = {"anyOf": [
                {"type": "array", "items": {"type": "string", "minLength": 1}},
                {"type": "string"},
            ]}
        else:
            raise AssertionError(f"{env}: the chart has no schema for {ann}; add one here")
        if ann is not decimal.Decimal:
            for meta in field.metadata:
                if isinstance(meta, Ge):
                    prop["minimum"] = meta.ge
                elif isinstance(meta, Gt):
                    prop["exclusiveMinimum"] = meta.gt
                elif isinstance(meta, Le):
                    prop["maximum"] = meta.le
                elif isinstance(meta, Lt):
                    prop["exclusiveMaximum"] = meta.lt
                elif isinstance(meta, MinLen):
                    prop["minLength"] = meta.min_length
                elif isinstance(meta, MaxLen):
                    prop["maxLength"] = meta.max_length
                elif getattr(meta, "pattern", None):
                    prop["pattern"] = meta.pattern
        if ann is str and "pattern" not in prop and "minLength" not in prop:
            prop["minLength"] = 1
        if env == "TWIN_LOG_LEVEL":  # the daemon upper-cases it
            prop = {"enum": LOG_LEVELS + [level.lower() for level in LOG_LEVELS]}
        if field.description:
            prop["description"] = field.description
        props[env] = prop
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Other settings of the daemon by environment variable name "
                       "(bounds from bgmock_twin/settings/)",
        "properties": props,
    }


def setting_default(env: str) -> Any:
    """A setting's default as a values.yaml author would write it."""
    field = next(f for f in Settings.model_fields.values() if env_name(f) == env)
    value = field.get_default(call_default_factory=True)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


# --- rendering ----------------------------------------------------------------------



def render_raw(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def notes(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> str:
    rendered = render_raw(chart, values)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [m for m in manifests if m["kind"] == kind
               and (name is None or m["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def twin_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(manifests, "StatefulSet")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "twin")


def container_env(manifests: list[dict[str, Any]],
                  external_secrets: dict[str, dict[str, str]] | None = None,
                  pod_name: str = f"{FULLNAME}-0") -> dict[str, str]:
    """The environment the kubelet would give the container: envFrom sources in
    order (a later source wins), then env entries with $(VAR) expansion."""
    external_secrets = external_secrets or {}
    config_maps = {m["metadata"]["name"]: dict(m.get("data") or {})
                   for m in manifests if m["kind"] == "ConfigMap"}
    secrets = {m["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                       for k, v in (m.get("data") or {}).items()}
               for m in manifests if m["kind"] == "Secret"}
    secrets.update(external_secrets)
    container = twin_container(manifests)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source["secretRef"]
        known = config_maps if "configMapRef" in source else secrets
        if ref["name"] not in known:
            assert ref.get("optional"), f"required source {ref['name']} missing"
            continue
        env.update(known[ref["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)), entry["value"])
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = pod_name
        else:
            ref = source["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            if value is None:
                assert ref.get("optional"), f"required secret {ref['name']}/{ref['key']} missing"
                continue
            env[entry["name"]] = value
    return env


# --- value sets -------------------------------------------------------------------

def full_values() -> dict[str, Any]:
    """Every optional resource and knob on; every config key set (to its default)."""
    config = {env: setting_default(env) for env in config_schema()["properties"]}
    config["TWIN_LOG_LEVEL"] = "debug"
    config["TWIN_LOAD_RATE"] = 2.5
    config["TWIN_RETENTION_MAX_PAYMENTS"] = 2_000_000
    return {
        "commonLabels": {"team": "payments"},
        "image": {"repository": "registry.example/bgmock-twin", "tag": "1.2.3",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "bgmock": {"databases": {
            "bankA": {"url": "postgresql://bank_a_user:s3cret@postgres-service-bank-a:5432/bank_a_db"},
            "clearing": {"passwordSecret": {"name": ""}},
        }},
        "auth": {"controlToken": "token-from-values"},
        "ledger": {"url": "postgresql://twin:pw@twin-postgres:5432/twin"},
        "persistence": {"enabled": True, "storageClass": "standard", "size": "2Gi",
                        "annotations": {"backup": "daily"}},
        "config": config,
        "extraEnv": [{"name": "EXTRA_FLAG", "value": "1"}],
        "extraEnvFrom": [{"configMapRef": {"name": "twin-extra", "optional": True}}],
        "service": {"type": "NodePort", "nodePort": 30090, "annotations": {"a": "b"},
                    "labels": {"exposed": "yes"}},
        "serviceAccount": {"annotations": {"iam": "role"}},
        "podAnnotations": {"example.com/scrape": "false"},
        "podLabels": {"tier": "monitoring"},
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "podDisruptionBudget": {"minAvailable": 1},
        "networkPolicy": {"enabled": True, "ingress": {"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ]}, "egress": {"extra": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                  "ports": [{"port": 6443, "protocol": "TCP"}]}]}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "annotations": {"note": "x"}, "namespace": "monitoring",
                           "relabelings": [{"action": "replace", "targetLabel": "cluster",
                                            "replacement": "minikube"}],
                           "metricRelabelings": [{"action": "keep",
                                                  "sourceLabels": ["__name__"],
                                                  "regex": "bgmock_.*"}]},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "namespace": "monitoring",
                           "additionalRuleLabels": {"team": "payments"}},
        "dashboards": {"annotations": {"grafana_folder": "BGMock"}, "namespace": "monitoring"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "monitoring",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {
                                           "app.kubernetes.io/name": "bgmock-twin"}}}],
        "priorityClassName": "monitoring",
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
    }


EMBEDDED_VALUES: dict[str, Any] = {
    "mode": "embedded",
    "embedded": {"databases": {"bankA": "postgresql://emu:pw@pg:5432/bank_a"}},
    # Ignored in embedded mode: a DB_* there would replace the emulator's database.
    "bgmock": {"databases": {"bankB": {"url": "postgresql://u:p@real-bank-b:5432/d"}}},
}


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def load_example(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict), path
    return values


# --- one source of truth --------------------------------------------------------------

def shared_files() -> dict[str, str]:
    """What the chart must carry: the dashboards and the rule files, by chart path."""
    files = {f"files/dashboards/{p.name}": p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    files.update({f"files/rules/{p.name}": p.read_text()
                  for p in sorted(RULES.glob("*.rules.y*ml"))})
    return files


def test_the_shared_files_exist() -> None:
    assert sorted(DASHBOARDS.glob("*.json")), "grafana/dashboards/*.json missing"
    assert (RULES / "bgmock-twin.rules.yml").is_file(), "deploy/prometheus/rules missing"


def test_chart_files_are_symlinks_to_the_single_source() -> None:
    for link, target in ((CHART / "files" / "dashboards", DASHBOARDS),
                         (CHART / "files" / "rules", RULES)):
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        assert not Path(link.readlink()).is_absolute(), "relative, so it works in any clone"
        assert link.resolve() == target.resolve()


def test_helm_loader_follows_the_symlinks(chart: helm_python.Chart) -> None:
    carried = {f["name"]: f["data"] for f in chart.files if f["name"].startswith("files/")}
    expected = shared_files()
    assert {k: v for k, v in carried.items() if k in expected} == expected
    assert set(k for k in carried if k.endswith(".json")) == \
        set(k for k in expected if k.endswith(".json"))


def test_packaged_chart_carries_the_files_themselves(tmp_path: Path) -> None:
    archive = helm_python.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert not [n for n, m in members.items() if m.issym() or m.islnk()], "links in archive"
        for name, text in shared_files().items():
            member = tar.extractfile(members[f"bgmock-twin/{name}"])
            assert member is not None
            assert member.read().decode() == text
    with helm_python.Chart.load(archive) as packaged:
        manifests = render(packaged, {"prometheusRule": {"enabled": True}})
    assert find(manifests, "PrometheusRule")["spec"]["groups"]


# --- lint and Kubernetes schemas ---------------------------------------------------

FLEET_VALUES: dict[str, Any] = {"replicaCount": 3, "persistence": {"enabled": True},
                                "ledger": {"url": "postgresql://twin:pw@twin-postgres:5432/twin"}}


@pytest.mark.parametrize("values", [None, "full", "embedded", "fleet"])
def test_lint_is_clean(values: str | None) -> None:
    chosen = {"full": full_values(), "embedded": EMBEDDED_VALUES,
              "fleet": FLEET_VALUES}.get(values or "")
    report = helm_python.lint(CHART, chosen, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert findings == []


def validate_kubernetes(manifests: list[dict[str, Any]]) -> list[str]:
    """Validate against the Kubernetes schemas; return the kinds it cannot know."""
    unknown = []
    for manifest in manifests:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError:
                unknown.append(manifest["kind"])
                break
            except kubernetes_validate.utils.ValidationError as exc:
                raise AssertionError(
                    f"{manifest['kind']}/{manifest['metadata']['name']} invalid for "
                    f"Kubernetes {version}: {exc.message} at {list(exc.path)}") from None
    return sorted(set(unknown))


def test_default_render_is_valid_kubernetes(chart: helm_python.Chart) -> None:
    manifests = render(chart)
    assert validate_kubernetes(manifests) == []
    assert sorted(set(kinds(manifests))) == [
        "ConfigMap", "Pod", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount",
        "StatefulSet"]
    for manifest in manifests:
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert manifest["metadata"]["namespace"] == NAMESPACE


def test_fully_loaded_render_is_valid_kubernetes(chart: helm_python.Chart) -> None:
    manifests = render(chart, full_values())
    assert validate_kubernetes(manifests) == ["PrometheusRule", "ServiceMonitor"]
    assert {"NetworkPolicy", "StatefulSet", "ServiceMonitor", "PrometheusRule",
            "PodDisruptionBudget"} <= set(kinds(manifests))
    # The claim is the StatefulSet's (one per replica), not a resource of its own.
    assert "PersistentVolumeClaim" not in kinds(manifests)
    (claim,) = find(manifests, "StatefulSet")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    for manifest in manifests:
        assert manifest["metadata"]["labels"]["team"] == "payments"


def test_embedded_render_is_valid_kubernetes(chart: helm_python.Chart) -> None:
    assert validate_kubernetes(render(chart, EMBEDDED_VALUES)) == []


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.name)
def test_example_values_render_valid_manifests(chart: helm_python.Chart, example: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    values = load_example(example)
    chart.validate_schema(values)
    manifests = render(chart, values)
    assert set(validate_kubernetes(manifests)) <= {"PrometheusRule", "ServiceMonitor"}
    settings = daemon_settings(container_env(manifests, bgmock_postgres_secrets()),
                               monkeypatch, tmp_path)
    assert settings.listen_host == "0.0.0.0"


def test_there_is_a_minikube_example() -> None:
    names = [p.name for p in example_files()]
    assert any("minikube" in name for name in names), names


# --- what the defaults mean ------------------------------------------------------------

def bgmock_postgres_secrets() -> dict[str, dict[str, str]]:
    """BGMock's own Secrets as its manifests create them."""
    return {f"postgres-secret-{db}": {"POSTGRES_PASSWORD": "password"}
            for db in ("bank-a", "bank-b", "clearing")}


def test_defaults_point_at_a_standard_bgmock(chart: helm_python.Chart,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    manifests = render(chart)
    env = container_env(manifests, bgmock_postgres_secrets())
    assert env["BANK_A_URL"] == "http://bankgood-bank-a-service:8080"
    assert env["BANK_B_URL"] == "http://bankgood-bank-b-service:8080"
    assert env["CLEARING_SERVICE_URL"] == "http://bankgood-clearing-service:8080"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == \
        "bgmock-kafka-kafka-plain-bootstrap.kafka.svc.cluster.local:9092"
    assert env["DB_BANK_A"] == \
        "postgresql://bank_a_user:password@postgres-service-bank-a:5432/bank_a_db"
    assert env["DB_BANK_B"] == \
        "postgresql://bank_b_user:password@postgres-service-bank-b:5432/bank_b_db"
    assert env["DB_SWITCH"] == \
        "postgresql://clearing_user:password@postgres-service-clearing:5432/clearing_db"
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert not settings.embedded
    assert settings.listen_host == "0.0.0.0" and settings.listen_port == 8080
    assert settings.control_token is not None
    assert len(settings.control_token.get_secret_value()) == 48
    assert settings.twin_database_url.get_secret_value() == "sqlite:////data/twin.db"
    assert settings.instance_id == f"{FULLNAME}-0"
    assert settings.consumer_group == f"digital-twin-simulator.{FULLNAME}-0"
    assert settings.db_bank_a is not None


def test_without_bgmock_secrets_the_pod_still_starts(chart: helm_python.Chart) -> None:
    """BGMock's password Secrets are optional references: without them the twin starts
    and reports the databases it cannot reach instead of never being scheduled."""
    env = container_env(render(chart))
    assert "BGMOCK_DB_BANK_A_PASSWORD" not in env
    assert "$(BGMOCK_DB_BANK_A_PASSWORD)" in env["DB_BANK_A"]


def test_fully_loaded_environment_is_accepted_by_the_daemon(
        chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = full_values()
    manifests = render(chart, values)
    env = container_env(manifests, bgmock_postgres_secrets())
    assert env["TWIN_RETENTION_MAX_PAYMENTS"] == "2000000", "never 2e+06"
    assert env["TWIN_LOAD_RATE"] == "2.5"
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert settings.control_token is not None
    assert settings.control_token.get_secret_value() == "token-from-values"
    assert settings.twin_database_url.get_secret_value() == values["ledger"]["url"]
    assert settings.db_bank_a is not None
    assert settings.db_bank_a.get_secret_value() == values["bgmock"]["databases"]["bankA"]["url"]
    assert settings.db_switch is None, "clearing DB disabled by an empty passwordSecret.name"
    assert settings.load_rate_per_second == 2.5
    assert settings.retention_max_payments == 2_000_000
    assert settings.log_level == "DEBUG"
    for env_var in config_schema()["properties"]:
        assert env_var in env, f"config.{env_var} not rendered"
    secret = find(manifests, "Secret")
    assert set(secret["data"]) == {"TWIN_CONTROL_TOKEN", "DB_BANK_A", "TWIN_DATABASE_URL"}
    config_map = find(manifests, "ConfigMap", FULLNAME)
    assert "TWIN_DATABASE_URL" not in config_map["data"], "a PostgreSQL URL stays in the Secret"


def test_embedded_mode_needs_no_bgmock(chart: helm_python.Chart,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manifests = render(chart, EMBEDDED_VALUES)
    env = container_env(manifests)
    assert not {"BANK_A_URL", "BANK_B_URL", "CLEARING_SERVICE_URL", "KAFKA_BOOTSTRAP_SERVERS",
                "DB_BANK_A", "DB_BANK_B", "DB_SWITCH"} & set(env), \
        "never the real BGMock's Kafka or databases next to the emulator"
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert settings.embedded
    assert settings.emulator_db_bank_a is not None


def test_every_setting_reaches_the_daemon() -> None:
    """Each setting of the daemon is either a config key or set by the chart."""
    all_envs = {env_name(f) for f in Settings.model_fields.values()}
    config_keys = set(config_schema()["properties"])
    assert all_envs >= CHART_MANAGED, f"chart manages unknown settings: {CHART_MANAGED - all_envs}"
    assert config_keys | CHART_MANAGED == all_envs
    secret_settings = {env_name(f) for f in Settings.model_fields.values()
                       if SecretStr in typing.get_args(f.annotation) or f.annotation is SecretStr}
    assert not secret_settings & config_keys, "secrets never go into the ConfigMap"


def test_schema_config_section_is_derived_from_the_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == config_schema(), (
        "values.schema.json is behind bgmock_twin/settings/: run "
        "`.venv/bin/python tests/test_helm_chart.py --update-schema`")


# --- secrets ---------------------------------------------------------------------

def test_a_random_token_is_generated_when_none_is_given(chart: helm_python.Chart) -> None:
    first = container_env(render(chart))["TWIN_CONTROL_TOKEN"]
    second = container_env(render(chart))["TWIN_CONTROL_TOKEN"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", first)
    assert first != second, "random per fresh install (an upgrade reuses it via lookup)"
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $fullname' in template


def test_existing_secret_replaces_the_charts_secret(chart: helm_python.Chart,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    values = {"existingSecret": "twin-credentials", "auth": {"existingSecretKey": "token"},
              "bgmock": {"databases": {"enabled": False}}}
    manifests = render(chart, values)
    assert "Secret" not in kinds(manifests)
    mine = {"twin-credentials": {"token": "managed-elsewhere",
                                 "DB_BANK_A": "postgresql://a:b@h:5432/d",
                                 "TWIN_DATABASE_URL": "postgresql://t:p@h:5432/twin"}}
    env = container_env(manifests, mine)
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert settings.control_token is not None
    assert settings.control_token.get_secret_value() == "managed-elsewhere"
    assert settings.db_bank_a is not None
    assert settings.twin_database_url.get_secret_value() == "postgresql://t:p@h:5432/twin"
    with pytest.raises(AssertionError, match="required secret"):
        container_env(manifests, {"twin-credentials": {}})


def test_auth_disabled_allows_unauthenticated_access(chart: helm_python.Chart,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    manifests = render(chart, {"auth": {"enabled": False}})
    env = container_env(manifests)
    assert "TWIN_CONTROL_TOKEN" not in env
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert settings.allow_unauthenticated and settings.control_token is None


# --- pod security and probes ----------------------------------------------------------

def dockerfile_user() -> int:
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.startswith("USER ")]
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("values", [None, "full"])
def test_pod_runs_non_root_with_a_read_only_root_filesystem(chart: helm_python.Chart,
                                                             values: str | None) -> None:
    manifests = render(chart, full_values() if values else None)
    pod = find(manifests, "StatefulSet")["spec"]["template"]["spec"]
    container = twin_container(manifests)
    pod_ctx, ctx = pod["securityContext"], container["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == ctx["runAsUser"] == dockerfile_user() != 0
    assert pod_ctx["seccompProfile"] == ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # Writable paths: exactly the volumes, and the ledger lives on one of them.
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/data", "/tmp"}
    env = container_env(manifests, bgmock_postgres_secrets())
    url = env["TWIN_DATABASE_URL"]
    if url.startswith("sqlite"):
        assert url == "sqlite:////data/twin.db"


def test_probes_use_healthz_and_readyz(chart: helm_python.Chart) -> None:
    manifests = render(chart)
    container = twin_container(manifests)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["args"] == ["run"]
    service = find(manifests, "Service", FULLNAME)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= \
        find(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"].items()


def data_volume(statefulset: dict[str, Any]) -> dict[str, Any] | None:
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    return volumes.get("data")


def test_persistence_gives_each_replica_its_own_claim(chart: helm_python.Chart) -> None:
    manifests = render(chart, {"persistence": {"enabled": True, "size": "3Gi",
                                               "annotations": {"backup": "daily"}}})
    assert validate_kubernetes(manifests) == []
    statefulset = find(manifests, "StatefulSet")
    assert "PersistentVolumeClaim" not in kinds(manifests)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    # The pod mounts the claim of the template (data-<pod name>), no volume of its own.
    assert claim["metadata"]["name"] == "data"
    assert data_volume(statefulset) is None
    mounts = {m["name"]: m["mountPath"] for m in twin_container(manifests)["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "3Gi"}}}
    assert claim["metadata"]["annotations"] == {"backup": "daily"}
    # volumeClaimTemplates are immutable: a label that changes with the chart or
    # image version would fail every later `helm upgrade`.
    assert claim["metadata"]["labels"] == \
        statefulset["spec"]["selector"]["matchLabels"]
    # One pod at a time, the old one gone before its successor: one SQLite writer.
    assert statefulset["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                                     "rollingUpdate": {"partition": 0}}
    existing = find(render(chart, {"persistence": {"enabled": True, "existingClaim": "mine"}}),
                    "StatefulSet")
    assert "volumeClaimTemplates" not in existing["spec"]
    assert data_volume(existing) == {"name": "data",
                                     "persistentVolumeClaim": {"claimName": "mine"}}
    ephemeral = find(render(chart), "StatefulSet")
    assert "volumeClaimTemplates" not in ephemeral["spec"]
    assert data_volume(ephemeral) == {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}


def test_template_guards_reject_inconsistent_values(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="must exceed"):
        render(chart, {"terminationGracePeriodSeconds": 8})
    with pytest.raises(helm_python.HelmRenderError, match="at most 52"):
        render(chart, {"fullnameOverride": "t" * 53})
    assert find(render(chart, {"fullnameOverride": "t" * 52}), "StatefulSet")


# --- several replicas -----------------------------------------------------------------

POSTGRES_LEDGER = "postgresql://twin:pw@twin-postgres:5432/twin"


@pytest.mark.parametrize("url", [POSTGRES_LEDGER, "postgres://twin:pw@pg/twin",
                                 "postgresql+psycopg2://twin:pw@pg:5432/twin"])
def test_three_replicas_on_a_shared_ledger_are_a_valid_statefulset(
        chart: helm_python.Chart, url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    values = {"replicaCount": 3, "ledger": {"url": url}, "persistence": {"enabled": True}}
    chart.validate_schema(values)
    manifests = render(chart, values)
    assert validate_kubernetes(manifests) == []
    statefulset = find(manifests, "StatefulSet", FULLNAME)
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert "Deployment" not in kinds(manifests)
    # The governing Service is headless and selects the replicas.
    headless = find(manifests, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= \
        spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= \
        spec["template"]["metadata"]["labels"].items()
    # The API Service is still there, a normal one.
    api = find(manifests, "Service", FULLNAME)
    assert api["spec"]["type"] == "ClusterIP" and "clusterIP" not in api["spec"]
    # Each replica's instance id is its pod name: <StatefulSet>-<ordinal>, the same
    # after every restart, and so is its consumer group.
    (instance,) = [e for e in twin_container(manifests)["env"] if e["name"] == "TWIN_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    groups = set()
    for ordinal in range(spec["replicas"]):
        pod_name = f"{statefulset['metadata']['name']}-{ordinal}"
        env = container_env(manifests, bgmock_postgres_secrets(), pod_name=pod_name)
        settings = daemon_settings(env, monkeypatch, tmp_path)
        assert settings.instance_id == pod_name
        assert settings.twin_database_url.get_secret_value() == url
        groups.add(settings.consumer_group)
    assert groups == {f"digital-twin-simulator.{FULLNAME}-{n}" for n in range(3)}


REFUSED_LEDGERS = [
    pytest.param({}, "ledger.url is empty", id="no-url"),
    pytest.param({"persistence": {"enabled": True}}, "ledger.url is empty",
                 id="no-url-persistence"),
    pytest.param({"ledger": {"url": "sqlite:////data/twin.db"}},
                 'ledger.url has the scheme "sqlite"', id="sqlite"),
    pytest.param({"ledger": {"url": "sqlite:////data/twin.db"}, "persistence": {"enabled": True}},
                 'ledger.url has the scheme "sqlite"', id="sqlite-persistence"),
    pytest.param({"ledger": {"url": "mysql://twin:hunter2@db/twin"}},
                 'ledger.url has the scheme "mysql"', id="mysql"),
    pytest.param({"ledger": {"url": "sqlite:///postgresql://x"}},
                 'ledger.url has the scheme "sqlite"', id="postgres-in-path"),
]


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize(("values", "found"), REFUSED_LEDGERS)
def test_several_replicas_without_a_shared_ledger_are_refused(
        chart: helm_python.Chart, replicas: int, values: dict[str, Any], found: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as raised:
        render(chart, {**values, "replicaCount": replicas})
    message = str(raised.value)
    assert f"replicaCount={replicas} needs a shared ledger, but {found}" in message
    assert "Set ledger.url to a PostgreSQL URL" in message
    assert "hunter2" not in message, "never echo a URL's password"


def test_one_replica_needs_no_shared_ledger(chart: helm_python.Chart) -> None:
    for values in ({}, {"persistence": {"enabled": True}}, {"replicaCount": 0},
                   {"ledger": {"url": "sqlite:////data/other.db"}}):
        manifests = render(chart, values)
        assert validate_kubernetes(manifests) == []
        assert find(manifests, "StatefulSet")["spec"]["replicas"] == values.get("replicaCount", 1)


def test_ledger_url_in_an_existing_secret(chart: helm_python.Chart,
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    values = {"replicaCount": 3, "existingSecret": "twin-credentials",
              "ledger": {"inExistingSecret": True}}
    manifests = render(chart, values)
    assert validate_kubernetes(manifests) == []
    assert "TWIN_DATABASE_URL" not in find(manifests, "ConfigMap", FULLNAME)["data"], \
        "no SQLite default beside the Secret's URL"
    env = container_env(manifests, {"twin-credentials": {
        "TWIN_CONTROL_TOKEN": "t" * 32, "TWIN_DATABASE_URL": POSTGRES_LEDGER}},
        pod_name=f"{FULLNAME}-2")
    settings = daemon_settings(env, monkeypatch, tmp_path)
    assert settings.twin_database_url.get_secret_value() == POSTGRES_LEDGER
    assert settings.instance_id == f"{FULLNAME}-2"
    # Without the declaration the chart cannot know what the Secret holds: refused.
    with pytest.raises(helm_python.HelmRenderError, match="needs a shared ledger"):
        render(chart, {"replicaCount": 3, "existingSecret": "twin-credentials"})
    # ledger.url would be dropped with existingSecret (the chart's Secret is not rendered).
    with pytest.raises(helm_python.HelmRenderError,
                       match=r"ledger\.url is not used with existingSecret"):
        render(chart, {"replicaCount": 3, "existingSecret": "twin-credentials",
                       "ledger": {"url": POSTGRES_LEDGER}})
    with pytest.raises(helm_python.HelmRenderError, match="needs existingSecret"):
        render(chart, {"replicaCount": 3, "ledger": {"inExistingSecret": True}})


def test_several_replicas_cannot_share_an_existing_claim(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="one claim cannot be every replica"):
        render(chart, {"replicaCount": 2, "ledger": {"url": POSTGRES_LEDGER},
                       "persistence": {"enabled": True, "existingClaim": "mine"}})


def test_update_strategy_and_pod_management_are_configurable(chart: helm_python.Chart) -> None:
    values = {"replicaCount": 3, "ledger": {"url": POSTGRES_LEDGER},
              "podManagementPolicy": "OrderedReady",
              "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}
    manifests = render(chart, values)
    assert validate_kubernetes(manifests) == []
    spec = find(manifests, "StatefulSet")["spec"]
    assert spec["podManagementPolicy"] == "OrderedReady"
    assert spec["updateStrategy"] == values["updateStrategy"]


def test_disruption_budget_and_network_policy_select_the_replicas(
        chart: helm_python.Chart) -> None:
    values = full_values()
    values["replicaCount"] = 3
    manifests = render(chart, values)
    labels = find(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    budget = find(manifests, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    policy = find(manifests, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()


# --- values schema ------------------------------------------------------------------

BAD_VALUES = [
    ({"mode": "mirror"}, "/mode"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"strategy": {"type": "Recreate"}}, "strategy"),
    ({"podManagementPolicy": "AllAtOnce"}, "/podManagementPolicy"),
    ({"updateStrategy": {"type": "Recreate"}}, "/updateStrategy/type"),
    ({"ledger": {"inExistingSecret": "yes"}}, "/ledger/inExistingSecret"),
    ({"unknownKey": True}, "unknownKey"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "sha256:xyz"}}, "/image/digest"),
    ({"bgmock": {"bankAUrl": "bankgood-bank-a-service:8080"}}, "/bgmock/bankAUrl"),
    ({"bgmock": {"kafka": {"bootstrapServers": "kafka"}}}, "/bgmock/kafka/bootstrapServers"),
    ({"bgmock": {"databases": {"bankA": {"port": 0}}}}, "/bgmock/databases/bankA/port"),
    ({"config": {"TWIN_LOAD_RATE": 5000}}, "/config/TWIN_LOAD_RATE"),
    ({"config": {"TWIN_LOAD_RATE": "fast"}}, "/config/TWIN_LOAD_RATE"),
    ({"config": {"TWIN_LOAD_AMOUNT_MIN": "0.001"}}, "/config/TWIN_LOAD_AMOUNT_MIN"),
    ({"config": {"TWIN_LOAD_AMOUNT_MIN": "0"}}, "/config/TWIN_LOAD_AMOUNT_MIN"),
    ({"config": {"TWIN_LOAD_AMOUNT_MIN": 1.5}}, "/config/TWIN_LOAD_AMOUNT_MIN"),
    ({"config": {"TWIN_ACCOUNT_PREFIX": "twin"}}, "/config/TWIN_ACCOUNT_PREFIX"),
    ({"config": {"TWIN_LOG_LEVEL": "LOUD"}}, "/config/TWIN_LOG_LEVEL"),
    ({"config": {"TWIN_LOAD_RAT": 1}}, "TWIN_LOAD_RAT"),
    ({"config": {"TWIN_CONTROL_TOKEN": "in-a-configmap"}}, "TWIN_CONTROL_TOKEN"),
    ({"config": {"DB_BANK_A": "postgresql://u:p@h/d"}}, "DB_BANK_A"),
    ({"containerPort": 80}, "/containerPort"),
    ({"service": {"type": "ExternalName"}}, "/service/type"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
    ({"serviceMonitor": {"interval": "15 seconds"}}, "/serviceMonitor/interval"),
    ({"probes": {"readiness": {"path": "readyz"}}}, "/probes/readiness/path"),
    ({"dashboards": {"labels": {"grafana_dashboard": 1}}}, "/dashboards/labels/grafana_dashboard"),
    ({"existingSecret": "Not_A_Name"}, "/existingSecret"),
    ({"prometheusRule": {"disabledAlerts": ["BGMockNoSuchAlert"]}}, "/prometheusRule/disabledAlerts/0"),
    ({"prometheusRule": {"disabledAlerts": "BGMockServiceDown"}}, "/prometheusRule/disabledAlerts"),
    ({"prometheusRule": {"runbookUrlBase": "wiki/RUNBOOK.md"}}, "/prometheusRule/runbookUrlBase"),
    ({"prometheusRule": {"runbookUrlBase": "https://wiki.example/RUNBOOK.md#x"}},
     "/prometheusRule/runbookUrlBase"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values_at_install_time(chart: helm_python.Chart,
                                                    values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(chart, values)
    assert where in str(raised.value)


@pytest.mark.parametrize("values", [
    {"config": {"TWIN_LOG_LEVEL": "warning", "TWIN_LOAD_AMOUNT_MIN": "0.05",
                "TWIN_LOAD_AMOUNT_MAX": "12"}},
    {"config": {"TWIN_LAG_GROUPS": ["bank-service-forwarded.01", "clearing-service-initiated"]}},
    {"config": {"TWIN_LAG_GROUPS": "bank-service-forwarded.01,clearing-service-initiated"}},
    {"podDisruptionBudget": {"minAvailable": "50%"}},
    {"service": {"type": "NodePort", "nodePort": 30090}},
])
def test_schema_accepts_good_values(chart: helm_python.Chart, values: dict[str, Any],
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manifests = render(chart, values)
    daemon_settings(container_env(manifests, bgmock_postgres_secrets()), monkeypatch, tmp_path)


# --- Prometheus Operator resources --------------------------------------------------

DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y))+$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name", "namespace", "labels"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
    "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}}
# The parts of the monitoring.coreos.com/v1 CRDs the chart uses (their openAPIV3Schema).
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {"type": "object", "required": ["selector", "endpoints"],
                 "additionalProperties": False, "properties": {
            "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"},
                                                 "matchNames": {"type": "array",
                                                                "items": {"type": "string"}}}},
            "selector": {"type": "object", "properties": {"matchLabels": STRING_MAP}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "honorLabels": {"type": "boolean"},
                    "interval": {"type": "string", "pattern": DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": DURATION},
                    "relabelings": {"type": "array", "items": {"type": "object"}},
                    "metricRelabelings": {"type": "array", "items": {"type": "object"}}}}},
        }},
    },
}
RULE_SCHEMA = {
    "type": "object", "required": ["expr"], "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                   "expr": {"type": ["string", "integer"]},
                   "for": {"type": "string", "pattern": DURATION},
                   "keep_firing_for": {"type": "string", "pattern": DURATION},
                   "labels": STRING_MAP, "annotations": STRING_MAP}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False,
                 "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "required": ["name", "rules"],
                     "additionalProperties": False, "properties": {
                         "name": {"type": "string", "minLength": 1},
                         "interval": {"type": "string", "pattern": DURATION},
                         "limit": {"type": "integer"},
                         "query_offset": {"type": "string", "pattern": DURATION},
                         "labels": STRING_MAP,
                         "rules": {"type": "array", "items": RULE_SCHEMA}}}}}},
    },
}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", duration))


def test_service_monitor_scrapes_the_twins_service(chart: helm_python.Chart) -> None:
    values = full_values()
    manifests = render(chart, values)
    monitor = find(manifests, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = find(manifests, "Service", FULLNAME)
    headless = find(manifests, "Service", f"{FULLNAME}-headless")
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not spec["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items(), \
        "the headless Service selects the same pods: scraped through both, counted twice"
    assert service["metadata"]["labels"][spec["jobLabel"]] == "bgmock-twin"
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True, "the twin's own service/job labels win"
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    assert endpoint["relabelings"] == values["serviceMonitor"]["relabelings"]


def rule_groups_from_files() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES.glob("*.rules.y*ml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def test_prometheus_rule_carries_the_rule_files(chart: helm_python.Chart) -> None:
    rule = find(render(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["spec"]["groups"] == rule_groups_from_files()


def test_prometheus_rule_adds_labels_to_alerts_only(chart: helm_python.Chart) -> None:
    rule = find(render(chart, full_values()), "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    originals = rule_groups_from_files()
    alerts = 0
    for group, original in zip(rule["spec"]["groups"], originals, strict=True):
        for rendered, source in zip(group["rules"], original["rules"], strict=True):
            if "alert" in source:
                alerts += 1
                assert rendered["labels"] == {"team": "payments", **source.get("labels", {})}
                assert {k: v for k, v in rendered.items() if k != "labels"} == \
                    {k: v for k, v in source.items() if k != "labels"}
            else:
                assert rendered == source
    assert alerts > 0


def alert_names() -> list[str]:
    """Every alert name of the rule files, each once, sorted."""
    return sorted({rule["alert"] for group in rule_groups_from_files()
                   for rule in group["rules"] if "alert" in rule})


def rendered_rules(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_schema_knows_every_alert_name() -> None:
    """disabledAlerts is checked at install time against the rule files' names."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    disabled = schema["properties"]["prometheusRule"]["properties"]["disabledAlerts"]
    assert disabled["items"]["enum"] == alert_names(), (
        "values.schema.json is behind deploy/prometheus/rules: run "
        "`.venv/bin/python tests/test_helm_chart.py --update-schema`")


def test_every_alert_can_be_disabled(chart: helm_python.Chart) -> None:
    """Each alert, disabled by values, is gone from the PrometheusRule (every rule of
    that name) and nothing else changed; the rest still passes promtool."""
    originals = rule_groups_from_files()
    for name in alert_names():
        rule = find(render(chart, {"prometheusRule": {"enabled": True,
                                                      "disabledAlerts": [name]}}),
                    "PrometheusRule")
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
        expected = [{**group, "rules": [r for r in group["rules"] if r.get("alert") != name]}
                    for group in originals]
        assert rule["spec"]["groups"] == [g for g in expected if g["rules"]], name
        assert name not in {r.get("alert") for r in rendered_rules(rule)}


def test_disabled_alerts_leave_no_empty_group(chart: helm_python.Chart, tmp_path: Path) -> None:
    services = next(g for g in rule_groups_from_files() if g["name"] == "bgmock-services")
    gone = [r["alert"] for r in services["rules"]] + ["BGMockPaymentErrorBudgetBurn"]
    rule = find(render(chart, {"prometheusRule": {"enabled": True, "disabledAlerts": gone}}),
                "PrometheusRule")
    assert "bgmock-services" not in {g["name"] for g in rule["spec"]["groups"]}
    kept = rendered_rules(rule)
    assert not {r.get("alert") for r in kept} & set(gone)
    # The burn-rate recording rules stay (dashboards may use them); the rest is valid.
    assert any(r.get("record", "").endswith(":burnrate1h") for r in kept)
    path = tmp_path / "rendered.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_disabling_every_alert_keeps_the_recording_rules(chart: helm_python.Chart) -> None:
    """With every alert off the burn rates are still recorded (for dashboards)."""
    values = {"prometheusRule": {"enabled": True, "disabledAlerts": alert_names()}}
    rule = find(render(chart, values), "PrometheusRule")
    assert rendered_rules(rule)
    assert all("record" in r for r in rendered_rules(rule))


@pytest.mark.parametrize("base", ["https://wiki.example.org/ops/bgmock/RUNBOOK.md",
                                  "https://wiki.example.org/ops/bgmock/RUNBOOK.md#"])
def test_runbook_url_base_is_replaced_everywhere(chart: helm_python.Chart, base: str) -> None:
    values = {"prometheusRule": {"enabled": True, "runbookUrlBase": base}}
    rule = find(render(chart, values), "PrometheusRule")
    originals = rule_groups_from_files()
    placeholder = next(r["annotations"]["runbook_url"] for g in originals for r in g["rules"]
                       if "alert" in r).partition("#")[0]
    assert placeholder not in yaml.safe_dump(rule), "the placeholder base is still rendered"
    alerts = 0
    for group, original in zip(rule["spec"]["groups"], originals, strict=True):
        for rendered, source in zip(group["rules"], original["rules"], strict=True):
            if "alert" not in source:
                assert rendered == source
                continue
            alerts += 1
            url = rendered["annotations"]["runbook_url"]
            assert url == f"{base.rstrip('#')}#{source['alert'].lower()}"
            assert {**rendered, "annotations": {**rendered["annotations"], "runbook_url": ""}} == \
                {**source, "annotations": {**source["annotations"], "runbook_url": ""}}
    assert alerts == sum(1 for g in originals for r in g["rules"] if "alert" in r)


@pytest.mark.parametrize("values", ["default", "full"])
def test_rendered_rules_pass_promtool(chart: helm_python.Chart, tmp_path: Path,
                                      values: str) -> None:
    chosen = full_values() if values == "full" else {"prometheusRule": {"enabled": True}}
    rule = find(render(chart, chosen), "PrometheusRule")
    path = tmp_path / "rendered.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- dashboards -----------------------------------------------------------------------

def dashboard_config_maps(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "ConfigMap"
            and m["metadata"]["name"].startswith(f"{FULLNAME}-dashboard-")]


def test_dashboard_config_maps_hold_the_same_json(chart: helm_python.Chart) -> None:
    maps = dashboard_config_maps(render(chart))
    sources = sorted(DASHBOARDS.glob("*.json"))
    assert len(maps) == len(sources) > 0
    by_file = {name: (m, data) for m in maps for name, data in m["data"].items()}
    assert sorted(by_file) == [p.name for p in sources]
    for path in sources:
        config_map, data = by_file[path.name]
        assert data == path.read_text(), f"{path.name} differs from grafana/dashboards"
        json.loads(data)
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(data.encode()) < 1_000_000, "a ConfigMap holds at most 1 MiB"
    names = [m["metadata"]["name"] for m in maps]
    assert len(set(names)) == len(names)


def test_dashboard_label_and_namespace_are_configurable(chart: helm_python.Chart) -> None:
    maps = dashboard_config_maps(render(chart, {"dashboards": {
        "labels": {"grafana_dashboard": None, "dashboards": "bgmock"},
        "annotations": {"grafana_folder": "BGMock"}, "namespace": "monitoring"}}))
    assert maps
    for config_map in maps:
        meta = config_map["metadata"]
        assert meta["labels"]["dashboards"] == "bgmock"
        assert "grafana_dashboard" not in meta["labels"]
        assert meta["annotations"] == {"grafana_folder": "BGMock"}
        assert meta["namespace"] == "monitoring"
    assert dashboard_config_maps(render(chart, {"dashboards": {"enabled": False}})) == []


# --- NOTES, network policy, README -----------------------------------------------------

def test_notes_tell_how_to_reach_the_api_and_run_a_simulation(chart: helm_python.Chart) -> None:
    text = notes(chart)
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 8080:8080" in text
    assert f"secret {FULLNAME} -o jsonpath='{{.data.TWIN_CONTROL_TOKEN}}'" in text
    assert "POST $TWIN_URL/api/v1/simulations" in text
    # The example body is one the control API accepts.
    (body,) = re.findall(r"-d '(\{.*\})'", text)
    SimulationRequest.model_validate(json.loads(body))
    assert "Authorization: Bearer $TWIN_TOKEN" in text
    assert "http://bankgood-bank-a-service:8080" in text
    node_port = notes(chart, {"service": {"type": "NodePort", "nodePort": 30090}})
    assert "minikube ip" in node_port
    assert "embedded" in notes(chart, EMBEDDED_VALUES)
    assert f"pods {FULLNAME}-0)" in text
    fleet = notes(chart, {"replicaCount": 3, "ledger": {"url": "postgresql://t:p@pg/twin"}})
    assert f"pods {FULLNAME}-0 to {FULLNAME}-2" in fleet


def test_network_policy_admits_scrapes_and_limits_egress(chart: helm_python.Chart) -> None:
    policy = find(render(chart, full_values()), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {"podSelector": {}} in ingress["from"]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"]
                    for p in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP"), (8080, "TCP"), (9092, "TCP"), (5432, "TCP"),
            (6443, "TCP")} <= egress_ports


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in {"config", "podSecurityContext",
                                                               "securityContext", "resources"}:
            yield from leaf_paths(value, path + ".")
        else:
            yield path


TABLE_START, TABLE_END = "<!-- config-table:start", "<!-- config-table:end -->"


def config_table() -> str:
    """The README's table of `config` keys, from the derived schema."""
    rows = ["| key | type and bounds | description |", "|---|---|---|"]
    for key, prop in config_schema()["properties"].items():
        if "enum" in prop:
            kind = "one of " + ", ".join(f"`{v}`" for v in prop["enum"]
                                         if not (str(v).islower() and str(v).upper() in prop["enum"]))
        elif "anyOf" in prop:
            kind = "list of strings, or one comma-separated string"
        elif prop.get("pattern") == POSITIVE_MONEY:
            kind = "string: an amount > 0 with at most 2 decimals"
        elif prop.get("pattern") == MONEY:
            kind = "string: an amount with at most 2 decimals"
        else:
            bounds = [f"{sign} {prop[name]}" for name, sign in (
                ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                ("exclusiveMaximum", "<"), ("minLength", "length ≥"), ("maxLength", "length ≤"))
                if name in prop]
            if "pattern" in prop:
                bounds.append(f"`{prop['pattern']}`")
            kind = ", ".join([prop["type"], *bounds])
        rows.append(f"| `{key}` | {kind} | {prop.get('description', '')} |")
    return "\n".join(rows) + "\n"


def readme_with_config_table(readme: str) -> str:
    head, rest = readme.split(TABLE_START, 1)
    marker, _ = rest.split("\n", 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}{marker}\n{config_table()}{TABLE_END}{tail}"


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in leaf_paths(defaults) if f"| `{path}` |" not in readme]
    assert missing == []
    assert readme == readme_with_config_table(readme), (
        "the README's config table is behind bgmock_twin/settings/: run "
        "`.venv/bin/python tests/test_helm_chart.py --update-schema`")


def update_schema() -> None:
    path = CHART / "values.schema.json"
    schema = json.loads(path.read_text())
    schema["properties"]["config"] = config_schema()
    rule_values = schema["properties"]["prometheusRule"]["properties"]
    rule_values["disabledAlerts"]["items"]["enum"] = alert_names()
    path.write_text(json.dumps(schema, indent=2) + "\n")
    readme = CHART / "README.md"
    readme.write_text(readme_with_config_table(readme.read_text()))
    print(f"updated {path.relative_to(ROOT)} and {readme.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-schema"]:
        update_schema()
    else:
        sys.exit("usage: tests/test_helm_chart.py --update-schema")
