"""The deployment kit: files parse, reference what exists, and configure what the issue asks
(non-root multi-stage image, probes on /healthz and /readyz, graceful termination, a
PodDisruptionBudget, the dashboard's queries backed by rules). Docker and Kubernetes are not
available on these machines; what runs here is this test, promtool and storepulse's own config
validation."""

import json
import pathlib
import re
import shutil
import subprocess

import yaml
from conftest import storepulse
from test_rules import PROMTOOL, RULES

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "storepulse.json"


def documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_yaml_and_json_file_parses():
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert documents(path), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def test_the_image_is_multi_stage_and_runs_as_non_root():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == 2
    assert re.search(r"^USER 10001", dockerfile, re.M)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"Dockerfile copies missing {item}"


def test_kubernetes_manifests_probe_scale_and_terminate_gracefully():
    manifests = {doc["kind"]: doc for path in (DEPLOY / "k8s").glob("*.yaml") for doc in documents(path)}
    assert {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "PodDisruptionBudget", "CronJob"} <= set(manifests)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert manifests["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_shipped_configurations_pass_storepulse_validation(tmp_path):
    configs = {"configmap.toml": documents(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]["storepulse.toml"],
               "compose.toml": documents(DEPLOY / "compose.yaml")[0]["configs"]["storepulse-config"]["content"],
               "storepulse.toml": (DEPLOY / "storepulse.toml").read_text()}
    # The ConfigMap is completed by the Deployment's STOREPULSE_<SECTION>__<KEY> variables; its
    # S3 bucket is not reachable here (--check writes a probe), so the output goes to a directory.
    deployment = next(doc for doc in documents(DEPLOY / "k8s" / "deployment.yaml") if doc["kind"] == "Deployment")
    container_env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                     if e["name"].startswith("STOREPULSE_") and "value" in e}
    assert container_env["STOREPULSE_KAFKA__BROKERS"]
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
        env = {**container_env, "STOREPULSE_OUTPUT__DIR": str(tmp_path / "out")} if name == "configmap.toml" else {}
        result = storepulse("run", "--config", tmp_path / name, "--check", timeout=30, env=env)
        assert "valid" in result.stdout, name
        if env:
            assert f"brokers {container_env['STOREPULSE_KAFKA__BROKERS']}," in result.stdout, result.stdout


def test_compose_prometheus_configuration_is_valid(tmp_path):
    compose = documents(DEPLOY / "compose.yaml")[0]
    assert {"kafka", "storepulse", "generator", "prometheus", "grafana"} <= set(compose["services"])
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / RULES.name)
    (tmp_path / "prometheus.yml").write_text(compose["configs"]["prometheus-config"]["content"])
    result = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_portable_and_filterable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"channel", "warehouse", "instance"} <= set(variables)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        sources = [panel["datasource"]] + [t["datasource"] for t in panel.get("targets", []) if "datasource" in t]
        assert all(s["uid"] == "${datasource}" for s in sources), panel["title"]
    text = "\n".join(dashboard_queries())
    for variable in ("$channel", "$warehouse", "$instance"):
        assert variable in text, variable
    money = [p for p in panels if any(word in p["title"] for word in ("GMV", "AOV", "客单价"))]
    assert len(money) == 3 and all(p["fieldConfig"]["defaults"]["unit"] == "currencyCNY" for p in money)


def test_the_dashboard_covers_operations_and_sre_and_uses_defined_rules():
    queries = dashboard_queries()
    assert len(queries) >= 30
    text = "\n".join(queries)
    for needed in ["paid_conversion", "orders_paid_amount", "average_order_value", "revenue_per_buyer",
                   "paid_to_pickup", "delivered_on_time", "backlog", "consumer_lag", "event_time_lag",
                   "events_late", "events_rejected", "checkpoint"]:
        assert needed in text, needed
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
                if "record" in rule}
    for name in set(re.findall(r"\bstorepulse:[a-z_0-9]+:[a-z_0-9]+", text)):
        assert name in recorded, f"the dashboard queries {name}, which no recording rule defines"
