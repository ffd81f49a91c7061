"""deploy/k8s/profile-service.yaml's NetworkPolicy: valid, and it opens the service's one port to labelled
clients and Prometheus only (tests/test_k8s.py validates the other manifests and the rest of this file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "profile-service.yaml"
DOCS = {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}
CLIENT = {"nextclick.dev/profile-client": "true"}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_the_policy_is_valid(version: str) -> None:
    kubernetes_validate.validate(DOCS["NetworkPolicy"], version, strict=True)


def test_the_policy_opens_the_http_port_to_labelled_clients_and_prometheus_only() -> None:
    policy: dict[str, Any] = DOCS["NetworkPolicy"]["spec"]
    pod = DOCS["Deployment"]["spec"]["template"]
    assert matches(policy["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["podSelector"]["matchLabels"] == DOCS["Service"]["spec"]["selector"]  # the service's pods only
    assert policy["policyTypes"] == ["Ingress"]
    (container,) = pod["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["http"]  # the API and /metrics share it
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    clients, scraper = policy["ingress"]
    for rule in (clients, scraper):
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (peer,) = clients["from"]
    assert peer == {"namespaceSelector": {}, "podSelector": {"matchLabels": CLIENT}}  # labelled pods, not any pod
    (prometheus,) = scraper["from"]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}  # one namespace's Prometheus
    assert "nextclick.dev/profile-client" in (MANIFEST.parents[2] / "docs" / "profile-service.md").read_text()
