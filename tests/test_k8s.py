"""deploy/k8s: every manifest valid against the Kubernetes schemas, offline, and wired consistently.

Schemas: kubernetes-validate bundles the Kubernetes JSON schemas for each version it supports, so
nothing is fetched; strict mode rejects unknown fields (a typo is an error, not a silently ignored
key). Checked against the oldest version targeted and the newest bundled. The PodMonitor and the
PrometheusRule are CRDs (Prometheus Operator) with no Kubernetes schema: they are checked against
tests/k8s/podmonitor-monitoring-v1.json and tests/k8s/prometheusrule-monitoring-v1.json, written from the
CRDs' documented fields.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from nextclick.flows.cli import build_parser
from nextclick.flows.cluster import ClusterError, resolve
from nextclick.operators.infra.config import load_config

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
VERSIONS = ("1.28.0", "1.37.0")
PODMONITOR_SCHEMA = json.loads((Path(__file__).parent / "k8s" / "podmonitor-monitoring-v1.json").read_text())
PROMETHEUSRULE_SCHEMA = json.loads((Path(__file__).parent / "k8s" / "prometheusrule-monitoring-v1.json").read_text())
README = (REPO / "deploy" / "README.md").read_text()

Doc = dict[str, Any]


KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated() -> list[tuple[str, Doc]]:
    """The ConfigMaps kustomize generates (configMapGenerator), before it adds the content hash to
    their names and to the references (which name them by the generator's name)."""
    out = []
    for gen in KUSTOMIZATION.get("configMapGenerator", []):
        doc = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": gen["name"], "labels": gen.get("options", {}).get("labels", {})},
               "data": {Path(f).name: (K8S / f).read_text() for f in gen["files"]}}
        out.append((f"configMapGenerator:{gen['name']}", doc))
    return out


def resources() -> list[tuple[str, Doc]]:
    return [(name, doc) for name in KUSTOMIZATION["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc] + generated()


# The profile query service's manifests (a Deployment and its Service): checked by the tests at the end;
# `one` finds the flow's.
PROFILE_SERVICE = "profile-service.yaml"


def one(kind: str) -> Doc:
    found = [doc for name, doc in resources() if doc["kind"] == kind and name != PROFILE_SERVICE]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(doc: Doc, version: str) -> None:
    if doc["kind"] == "PodMonitor":
        jsonschema.Draft202012Validator(PODMONITOR_SCHEMA).validate(doc)
    elif doc["kind"] == "PrometheusRule":
        jsonschema.Draft202012Validator(PROMETHEUSRULE_SCHEMA).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


STS = one("StatefulSet")
POD = STS["spec"]["template"]
CONTAINER = POD["spec"]["containers"][0]
JOB = one("Job")
JOB_POD = JOB["spec"]["template"]
JOB_CONTAINER = JOB_POD["spec"]["containers"][0]


def run_args() -> tuple[Any, str]:
    """The container's args through `nextclick run`'s own parser (the image's ENTRYPOINT is `nextclick run`),
    and the metrics address."""
    args, unknown = build_parser().parse_known_args(["run", *CONTAINER["args"]])
    address = getattr(args, "metrics_address", None)
    if address is None:  # --metrics-address arrives with the ops branch (issue 12); until then by hand
        assert unknown[:1] == ["--metrics-address"] and len(unknown) == 2, unknown
        address = unknown[1]
    else:
        assert not unknown, unknown
    return args, address


def test_kustomization_lists_every_manifest_and_no_secret_is_committed() -> None:
    listed = set(KUSTOMIZATION["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {f for g in KUSTOMIZATION["configMapGenerator"] for f in g["files"]} == {p.name for p in K8S.glob("*.toml")}
    kinds = sorted(doc["kind"] for _, doc in resources())
    # Two NetworkPolicies: the flow's (networkpolicy.yaml) and the profile service's (profile-service.yaml).
    assert kinds == ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "PodMonitor", "PrometheusRule", "Service", "Service", "StatefulSet"]
    for path in (REPO / "deploy").rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path} commits a Secret"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name, kind", [(name, doc["kind"]) for name, doc in resources()])
def test_manifest_is_valid(name: str, kind: str, version: str) -> None:
    for doc_name, doc in resources():
        if (doc_name, doc["kind"]) == (name, kind):
            validate(doc, version)


def test_validation_rejects_a_misspelt_field() -> None:
    """The check has teeth: strict schemas reject what the API server would silently drop."""
    sts = copy.deepcopy(STS)
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(sts, VERSIONS[0], strict=True)
    monitor = copy.deepcopy(one("PodMonitor"))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError, match="podMetricEndpoints"):
        validate(monitor, VERSIONS[0])
    rule = copy.deepcopy(one("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["annotation"] = rule["spec"]["groups"][0]["rules"][0].pop("annotations")
    with pytest.raises(jsonschema.ValidationError, match="annotation"):
        validate(rule, VERSIONS[0])


def test_the_cluster_addresses_are_the_pods_of_the_headless_service() -> None:
    svc = one("Service")
    args, _ = run_args()
    replicas = STS["spec"]["replicas"]
    assert STS["spec"]["podManagementPolicy"] == "Parallel"
    assert svc["metadata"]["name"] == STS["spec"]["serviceName"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert matches(svc["spec"]["selector"], POD["metadata"]["labels"])
    env = {e["name"]: e for e in CONTAINER["env"]}
    assert env["NEXTCLICK_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["NEXTCLICK_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["cluster"]["port"] == ports["cluster"] and svc_ports["cluster"]["targetPort"] == "cluster"
    assert args.processes == replicas
    # What each pod resolves to, as Kubernetes expands $(NEXTCLICK_NAMESPACE) in args.
    template = args.addresses.replace("$(NEXTCLICK_NAMESPACE)", "prod")
    name, service = STS["metadata"]["name"], STS["spec"]["serviceName"]
    for ordinal in range(replicas):
        place = resolve(None, template, args.processes, f"{name}-{ordinal}")
        assert place.process_id == ordinal
        assert place.addresses == tuple(f"{name}-{i}.{service}.prod.svc:{ports['cluster']}" for i in range(replicas))
    with pytest.raises(ClusterError, match="outside"):  # `kubectl scale` alone: the new pod refuses to join
        resolve(None, template, args.processes, f"{name}-{replicas}")


def test_metrics_port_probes_podmonitor_and_annotations_agree() -> None:
    _, address = run_args()
    host, _, port = address.rpartition(":")
    assert host == "0.0.0.0", "probes and Prometheus reach the pod's IP, not its loopback"
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert int(port) == ports["metrics"] == int(POD["metadata"]["annotations"]["prometheus.io/port"])
    assert {p["name"]: p["port"] for p in one("Service")["spec"]["ports"]}["metrics"] == ports["metrics"]
    probes = {k: CONTAINER[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: v["path"] for k, v in probes.items()} == {
        "startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == ports["metrics"]
    monitor = one("PodMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], POD["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == POD["metadata"]["annotations"]["prometheus.io/path"]


def test_the_disruption_budget_and_monitor_select_the_flow_pods_only() -> None:
    pdb = one("PodDisruptionBudget")
    for selector in (pdb["spec"]["selector"]["matchLabels"], one("PodMonitor")["spec"]["selector"]["matchLabels"]):
        assert matches(selector, POD["metadata"]["labels"])
        assert not matches(selector, JOB_POD["metadata"]["labels"])
    assert matches(STS["spec"]["selector"]["matchLabels"], POD["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1 < STS["spec"]["replicas"]


def config_from_configmap(tmp_path: Path) -> Any:
    data = one("ConfigMap")["data"]
    path = tmp_path / "nextclick.toml"
    path.write_text(data["nextclick.toml"])
    return load_config(path, environ={})


def mounts(container: Doc) -> dict[str, Doc]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def under(path: str, mount_path: str) -> bool:
    return path == mount_path or path.startswith(mount_path.rstrip("/") + "/")


def test_volumes_hold_what_the_configuration_says(tmp_path: Path) -> None:
    config = config_from_configmap(tmp_path)
    args, _ = run_args()
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    claims = {c["metadata"]["name"]: c for c in STS["spec"]["volumeClaimTemplates"]}
    by_path = mounts(CONTAINER)
    for mount in by_path.values():
        assert (mount["name"] in volumes) != (mount["name"] in claims), mount["name"]

    def volume_of(path: str) -> Doc:
        best = max((m for m in by_path.values() if under(path, m["mountPath"])), key=lambda m: len(m["mountPath"]))
        return best

    # RocksDB and the recovery partition on the pod's own volume (tests/test_cluster_volumes.py).
    for path in (config.state.dir, config.state.recovery_dir):
        mount = volume_of(path)
        assert mount["name"] in claims and not mount.get("readOnly"), path
        assert claims[mount["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert args.recovery_per_process, "per-pod recovery dirs need --recovery-per-process"
    # Everything else it writes is an emptyDir; the root file system is read-only.
    assert "emptyDir" in volumes[by_path["/tmp"]["name"]]
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    # The config file and the hashing secret come from their mounts.
    config_mount = volume_of(args.config)
    assert volumes[config_mount["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert Path(args.config).name in one("ConfigMap")["data"]
    secret_mount = volume_of(config.privacy.secret_file)
    secret = volumes[secret_mount["name"]]["secret"]
    assert secret_mount["readOnly"] is True
    assert Path(config.privacy.secret_file).name in {i["path"] for i in secret["items"]}
    assert config.topics.control, "the control topic is configured"


def test_pods_run_as_the_image_user_and_can_write_a_fresh_volume() -> None:
    from tests.test_image import IMAGE

    uid, gid = (int(x) for x in IMAGE.user.split(":"))
    for pod in (POD, JOB_POD):
        ctx = pod["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid and ctx["runAsGroup"] == gid
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert POD["spec"]["securityContext"]["fsGroup"] == gid
    assert "command" not in CONTAINER, "the flow runs the image's ENTRYPOINT (`nextclick run`)"
    assert CONTAINER["image"] == JOB_CONTAINER["image"]
    images = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]
    assert CONTAINER["image"].split(":")[0] in {i["name"] for i in images}


def test_the_topics_job_uses_the_flows_configuration() -> None:
    config_path = run_args()[0].config
    assert JOB_CONTAINER["command"] == ["nextclick", "topics", "create", "--config", config_path]
    job_volumes = {v["name"]: v for v in JOB_POD["spec"]["volumes"]}
    mount = next(m for m in JOB_CONTAINER["volumeMounts"] if under(config_path, m["mountPath"]))
    assert job_volumes[mount["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    flow_env = {e["name"]: e for e in CONTAINER["env"]}
    for e in JOB_CONTAINER["env"]:
        assert e == flow_env[e["name"]]


def test_every_secret_reference_is_created_by_the_documented_command() -> None:
    refs: set[tuple[str, str]] = set()
    for pod in (POD, JOB_POD):
        for container in pod["spec"]["containers"]:
            for e in container.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    refs.add((e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]))
        for v in pod["spec"]["volumes"]:
            if "secret" in v:
                refs |= {(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]}
    command = re.search(r"kubectl create secret generic (\S+)(.*?)\n\s*```", README, flags=re.S)
    assert command, "deploy/README.md shows the kubectl create secret command"
    created = {(command.group(1), k) for k in re.findall(r"--from-(?:file|literal)=([\w-]+)=", command.group(2))}
    assert refs and refs == created


def test_grace_period_is_the_documented_drain_budget(tmp_path: Path) -> None:
    grace = POD["spec"]["terminationGracePeriodSeconds"]
    assert f"terminationGracePeriodSeconds: {grace}" in README
    # A drain finishes the current epoch first: the budget is many epochs, not a fraction of one.
    assert grace >= 10 * config_from_configmap(tmp_path).flow.epoch_seconds


def test_the_configuration_is_generated_so_a_change_rolls_out() -> None:
    """No ConfigMap manifest: kustomize generates it from nextclick.toml with a hash of the content in
    its name and rewrites the pods' references, so an edit is a new pod template (a new revision)."""
    assert not any(doc["kind"] == "ConfigMap" for name in KUSTOMIZATION["resources"]
                   for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)
    (gen,) = KUSTOMIZATION["configMapGenerator"]
    assert not gen.get("options", {}).get("disableNameSuffixHash")
    assert not KUSTOMIZATION.get("generatorOptions", {}).get("disableNameSuffixHash")
    for pod in (POD, JOB_POD):
        assert gen["name"] in {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}


def test_the_topics_job_is_named_after_the_image_tag_so_a_new_image_is_a_new_job() -> None:
    """A Job's pod template is immutable: `kubectl apply` with a new image would fail on the old Job.
    kustomize's replacement copies the image tag into the Job's name (checked by hand with
    `kubectl kustomize deploy/k8s`: nextclick-topics-0.1.0); here, the same rule applied to tags."""
    (rule,) = [r for r in KUSTOMIZATION["replacements"] if r["source"]["kind"] == "Job"]
    source = rule["source"]
    assert source["name"] == JOB["metadata"]["name"]
    assert source["fieldPath"] == f"spec.template.spec.containers.[name={JOB_CONTAINER['name']}].image"
    assert source["options"] == {"delimiter": ":", "index": 1}
    (target,) = rule["targets"]
    assert target["select"] == {"kind": "Job", "name": JOB["metadata"]["name"]}
    assert target["fieldPaths"] == ["metadata.name"] and target["options"]["delimiter"] == "-"

    def named(tag: str) -> str:
        image = f"{JOB_CONTAINER['image'].split(':')[0]}:{tag}"
        parts = JOB["metadata"]["name"].split("-")
        parts[target["options"]["index"]] = image.split(source["options"]["delimiter"])[source["options"]["index"]]
        return "-".join(parts)

    (image,) = KUSTOMIZATION["images"]
    names = {named(tag) for tag in (image["newTag"], "0.2.0", "0.2.0-rc.1")}
    assert named(image["newTag"]) == f"nextclick-topics-{image['newTag']}" and len(names) == 3
    for name in names:  # a Job's name becomes a label value: a DNS subdomain of at most 63 characters
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?", name), name


def test_pods_get_no_service_account_token() -> None:
    for pod in (POD, JOB_POD):
        assert pod["spec"]["automountServiceAccountToken"] is False


def test_the_network_policy_opens_the_cluster_port_to_the_flow_only_and_metrics_to_prometheus() -> None:
    policy = one("NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], POD["metadata"]["labels"])
    assert not matches(policy["spec"]["podSelector"]["matchLabels"], JOB_POD["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == set(ports) == {"cluster", "metrics"}  # every port has a rule; nothing else is open
    assert all(len(rule["ports"]) == 1 and rule["ports"][0]["protocol"] == "TCP" for rule in rules.values())
    (peers,) = rules["cluster"]["from"]
    assert peers == {"podSelector": {"matchLabels": POD["metadata"]["labels"]}}  # the flow's pods only
    (scraper,) = rules["metrics"]["from"]
    assert set(scraper) == {"namespaceSelector", "podSelector"}  # one namespace's Prometheus, not any pod
    security = (REPO / "docs" / "security.md").read_text()
    assert str(ports["cluster"]) in security and "cleartext" in security and "networkpolicy.yaml" in security


def test_the_podmonitor_carries_the_label_kube_prometheus_stack_selects() -> None:
    labels = one("PodMonitor")["metadata"]["labels"]
    assert labels.get("release"), "kube-prometheus-stack selects PodMonitors by `release: <helm release>`"
    assert "release:" in (K8S / "podmonitor.yaml").read_text().split("apiVersion")[0]  # and says how to set it


def test_the_startup_probe_outlasts_the_waits_at_start() -> None:
    """A pod waits for Kafka and then for the pods' DNS names before it serves /healthz: the startup
    probe must allow both, or the kubelet restarts a pod that would have started."""
    args, _ = run_args()
    probe = CONTAINER["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= args.broker_timeout + args.peer_dns_timeout + 30


# -- the profile query service (profile-service.yaml) -------------------------------------------------

SERVICE_DOCS = {doc["kind"]: doc for name, doc in resources() if name == PROFILE_SERVICE}
SERVE_POD = SERVICE_DOCS["Deployment"]["spec"]["template"]
(SERVE_CONTAINER,) = SERVE_POD["spec"]["containers"]


def test_the_profile_service_serves_the_flows_configuration_on_its_port_with_probes(tmp_path: Path) -> None:
    config = config_from_configmap(tmp_path)
    command = SERVE_CONTAINER["command"]
    assert command[:2] == ["nextclick", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.config == run_args()[0].config  # the flow's file: same topic, same secret file
    assert config.topics.profiles, "the flow writes the view topic the service reads"
    host, _, port = config.serve.address.rpartition(":")
    ports = {p["name"]: p["containerPort"] for p in SERVE_CONTAINER["ports"]}
    annotations = SERVE_POD["metadata"]["annotations"]
    assert host == "0.0.0.0" and int(port) == ports["http"] == int(annotations["prometheus.io/port"])
    probes = {k: SERVE_CONTAINER[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (v["path"], v["port"]) for k, v in probes.items()} == {"startupProbe": ("/healthz", "http"),
                                                                      "livenessProbe": ("/healthz", "http"),
                                                                      "readinessProbe": ("/readyz", "http")}
    service = SERVICE_DOCS["Service"]
    assert matches(service["spec"]["selector"], SERVE_POD["metadata"]["labels"])
    assert not matches(service["spec"]["selector"], POD["metadata"]["labels"])  # never the flow's pods
    assert not matches(one("Service")["spec"]["selector"], SERVE_POD["metadata"]["labels"])
    assert not matches(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], SERVE_POD["metadata"]["labels"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_the_profile_service_mounts_its_tokens_secret_and_store(tmp_path: Path) -> None:
    config = config_from_configmap(tmp_path)
    by_path = mounts(SERVE_CONTAINER)
    volumes = {v["name"]: v for v in SERVE_POD["spec"]["volumes"]}

    def volume_of(path: str) -> Doc:
        (mount,) = [m for m in by_path.values() if under(path, m["mountPath"])]
        return volumes[mount["name"]]

    assert volume_of(config.serve.token_file)["secret"]["secretName"] == "nextclick-profiles"
    assert volume_of(config.privacy.secret_file)["secret"]["secretName"] == "nextclick"
    assert "emptyDir" in volume_of(config.serve.store_dir)  # rebuilt from the topic, never precious
    assert volume_of(run_args()[0].config)["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    ctx = SERVE_POD["spec"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and SERVE_POD["spec"]["automountServiceAccountToken"] is False
    assert SERVE_CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    assert SERVE_CONTAINER["image"] == CONTAINER["image"]
    # The tokens' Secret is created by the command the manifest and the docs show.
    doc = (REPO / "docs" / "profile-service.md").read_text()
    command = "kubectl create secret generic nextclick-profiles --from-file=tokens="
    assert command in (K8S / PROFILE_SERVICE).read_text() and command in doc


def test_the_prometheus_rule_ships_the_runbooks_alerts() -> None:
    """One set of alerts: docs/operations.md's yaml block is what deploy/k8s/prometheusrule.yaml carries."""
    from tests.test_dashboard import RUNBOOK

    block = RUNBOOK.read_text().split("```yaml", 1)[1].split("```", 1)[0]
    rule = one("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(block)["groups"], \
        "deploy/k8s/prometheusrule.yaml and docs/operations.md's alerts differ: change both"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"NextclickSavepointStale", "NextclickDown", "NextclickEpochNotCommitted"} <= alerts
    assert rule["metadata"]["labels"].get("release") == one("PodMonitor")["metadata"]["labels"]["release"]
    assert "PrometheusRule" in README and "prometheusrule.yaml" in README


def test_the_shipped_configuration_schedules_savepoints_its_input_retention_covers(tmp_path: Path) -> None:
    """deploy/k8s restores a lost volume from the latest savepoint: the schedule is on, and the topics the
    Job creates keep longer than it (the start-up check refuses otherwise)."""
    from nextclick.operators.tools.schedule import check_recovery_plan

    config = config_from_configmap(tmp_path)
    assert config.state.on_lost_volume == "restore" and config.state.savepoint_interval_ms > 0
    assert config.topics.retention_ms == -1 or config.topics.retention_ms >= 3 * config.state.savepoint_interval_ms
    check_recovery_plan(config, lambda topics: {})  # the broker says nothing: [topics] retention_ms decides
