"""deploy/: Kubernetes manifests validate (offline, pinned version), the drain fits in the grace
period, the Dockerfile parses and runs as non-root with a working health check, compose loads."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import kubernetes_validate
import pytest
import yaml
from agent_server import running_agent, test_settings
from dockerfile_parse import DockerfileParser

from telephony_agent import serve
from telephony_agent.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests promise to work on
HANGUP_BOUND_S = 10.0  # CallBridge.end waits this long for the phone leg to close
PRESTOP_SLEEP_S = 5


def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def by_kind(kind: str) -> dict:
    found = [doc for _, doc in k8s_documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} manifests"
    return found[0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("path_doc", k8s_documents(), ids=lambda pd: f"{pd[0].name}:{pd[1]['kind']}")
def test_manifest_validates_against_the_kubernetes_schema(path_doc: tuple[Path, dict]) -> None:
    _, doc = path_doc
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kinds_the_issue_asks_for_are_there() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in k8s_documents()}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    } <= kinds


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_grace_period_outlasts_the_drain() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    drain = float(env_of(container)["AGENT_DRAIN_SECONDS"])
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop == ["sleep", str(PRESTOP_SLEEP_S)]
    worst_case = PRESTOP_SLEEP_S + drain + serve.GOODBYE_TIMEOUT_S + HANGUP_BOUND_S + serve.SHUTDOWN_TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] > worst_case
    assert drain > 0


def test_probes_security_and_secrets() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert any("secretRef" in source for source in container["envFrom"])
    # Every setting the manifests set is a real setting.
    names = set(Settings.model_construct().env_names().values())
    configmap = by_kind("ConfigMap")
    assert set(configmap["data"]) <= names
    assert set(env_of(container)) <= names
    assert env_of(container)["AGENT_PORT"] == str(container["ports"][0]["containerPort"])


def test_hpa_scales_on_active_calls_per_pod() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "agent_active_calls"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    max_calls = int(by_kind("ConfigMap")["data"]["AGENT_MAX_CALLS"])
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < max_calls
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment")["metadata"]["name"]
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-values.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == "agent_active_calls"


def test_pdb_and_service_select_the_pods() -> None:
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        assert by_kind(kind)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"


# -- the image ---------------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"), cache_content=True)
    return parser


def instructions(kind: str) -> list[str]:
    return [i["value"] for i in dockerfile().structure if i["instruction"] == kind]


def final_stage(kind: str) -> list[str]:
    structure = dockerfile().structure
    last_from = max(n for n, i in enumerate(structure) if i["instruction"] == "FROM")
    return [i["value"] for i in structure[last_from:] if i["instruction"] == kind]


def test_dockerfile_parses_and_is_production_shaped() -> None:
    parser = dockerfile()
    assert parser.baseimage.startswith(("python:3.11-slim", "python:3.12-slim"))
    (user,) = final_stage("USER")
    assert user.split(":")[0] not in {"root", "0"}
    assert final_stage("EXPOSE") == ["8080"]
    assert final_stage("STOPSIGNAL") == ["SIGTERM"]
    (health,) = final_stage("HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health
    (cmd,) = final_stage("CMD")
    assert cmd.replace('"', "").replace(",", " ").split() == ["[telephony-agent", "serve]"]


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]
    for value in instructions("COPY"):
        if value.startswith("--from"):
            continue
        *sources, _dest = shlex.split(value)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


async def test_healthcheck_commands_work_against_a_real_server() -> None:
    """The image's and compose's health checks, run as written, against the running app."""
    (health,) = final_stage("HEALTHCHECK")
    image_cmd = yaml.safe_load(health.split("CMD", 1)[1].strip())  # the exec form is JSON (and YAML)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose_cmd = compose["services"]["agent"]["healthcheck"]["test"]
    assert image_cmd[0] == "python" and compose_cmd[0] == "CMD"
    async with running_agent(test_settings(twilio_validate=False)) as agent:
        port = agent.base_url.rsplit(":", 1)[1]
        for argv in (image_cmd, compose_cmd[1:]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *argv[1:], env={**os.environ, "AGENT_PORT": port}
            )
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *image_cmd[1:], env={**os.environ, "AGENT_PORT": "1"}, stderr=subprocess.DEVNULL
        )
        assert await asyncio.wait_for(proc.wait(), 10) != 0  # and it fails when nothing answers
        async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/healthz") as r:
            assert r.status == 200


def test_compose_file() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    agent = compose["services"]["agent"]
    assert agent["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / agent["build"]["context"] / agent["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert agent["env_file"]
    assert agent["stop_signal"] == "SIGTERM"
    grace = float(agent["stop_grace_period"].rstrip("s"))
    drain = float(agent["environment"]["AGENT_DRAIN_SECONDS"])
    assert grace > drain + serve.GOODBYE_TIMEOUT_S + HANGUP_BOUND_S + serve.SHUTDOWN_TIMEOUT_S
    assert {"test", "interval", "timeout", "retries"} <= agent["healthcheck"].keys()
    names = set(Settings.model_construct().env_names().values())
    assert set(agent["environment"]) <= names
    assert "8080:8080" in agent["ports"]


def test_readme_explains_routing_and_drain() -> None:
    text = (DEPLOY / "README.md").read_text().lower()
    for phrase in ("websocket", "stickiness", "twilio_auth_token", "terminationgraceperiodseconds", "prometheus-adapter"):
        assert phrase in text, phrase


# -- SIP trunk ingress (deploy/k8s/sip) -------------------------------------------------------

K8S_SIP = K8S / "sip"


def sip_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_SIP.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


@pytest.mark.parametrize("path_doc", sip_documents(), ids=lambda pd: f"sip/{pd[0].name}:{pd[1]['kind']}")
def test_sip_manifest_validates_against_the_kubernetes_schema(path_doc: tuple[Path, dict]) -> None:
    kubernetes_validate.validate(path_doc[1], K8S_VERSION, strict=True)


def test_sip_manifests_media_on_the_host_network_signalling_on_udp_and_tcp() -> None:
    kustomization = yaml.safe_load((K8S_SIP / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p, _ in sip_documents())
    docs = {doc["kind"]: doc for _, doc in sip_documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    settings = Settings(_env_file=None, **{  # the values parse as the agent's settings
        e["name"]: e["value"] for e in env.values() if "value" in e
    })
    assert settings.sip_port == 5060 and settings.sip_transports == ["udp", "tcp"]
    first, last = (int(p) for p in settings.rtp_ports.split("-"))
    assert last > first
    assert env["AGENT_RTP_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = docs["Service"]
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {(5060, "UDP"), (5060, "TCP")}
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # the source allowlist sees the carrier
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pod["terminationGracePeriodSeconds"] > settings.drain_seconds
