"""deploy/kubernetes, rendered with `kubectl kustomize` and validated offline.

Every rendered object is checked against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: unknown fields are errors), the example
after `agentmesh inject` too. The control plane's probes, security and ports,
the example's ConfigMap (a valid agent.yaml with its contract) and the
autoscaler's metric (the sidecar's own gauge, through the prometheus-adapter
rule) are checked against the code they depend on.

Identity: the control plane's arguments, as rendered (with and without the
root-ca component), start a real control plane whose CA lands on the
database volume; the join-token Secret made by the documented `agentmesh
token create | kubectl create secret` pipeline is the one the injected
sidecar reads, and its token enrolls as the example agent.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentmesh.cli.control_plane import control_plane as control_plane_command
from agentmesh.identity.client import IdentityClient, IdentityError
from agentmesh.identity.keys import generate_key
from agentmesh.inject import SidecarOptions, inject, read_documents
from agentmesh.inject.sidecar import ADMIN_PORT, IDENTITY_DIR, INBOUND_PORT, JOIN_TOKEN_ENV, RUN_AS
from sidecar.app import load_contract
from sidecar.config.bootstrap import Bootstrap
from sidecar.identity import JOIN_TOKEN_ENV as SIDECAR_JOIN_TOKEN_ENV
from sidecar.identity import plan_identity
from sidecar.stats import SidecarStats
from tests.integration.controlplane import TOKEN as ADMIN
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.procs import free_port, grpc_serving, start, wait_for
from tests.unit.deploy.conftest import DEPLOY, ROOT, tool

KUBERNETES = DEPLOY / "kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()
ROOT_CA = KUBERNETES / "components" / "root-ca"


@cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    return render_path(KUBERNETES / folder)


def render_path(folder: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render_with_root_ca(tmp_path: Path) -> tuple[dict[str, Any], ...]:
    """An overlay as the component's comment tells operators to write one: the base plus components/root-ca."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    relative = Path(os.path.relpath(KUBERNETES, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [str(relative / "base")], "components": [str(relative / "components" / "root-ca")]}
        )
    )
    return render_path(overlay)


def only(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def container(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    [found] = [c for c in (*spec.get("initContainers", ()), *spec["containers"]) if c["name"] == name]
    return found


@pytest.mark.parametrize("folder", ["base", "examples"])
def test_renders_to_valid_kubernetes_objects(folder):
    objects = render(folder)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_mistakes():
    deployment = yaml.safe_load(yaml.safe_dump(only(render("base"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_examples_need_the_load_restrictor_flag_only_for_the_contract():
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUBERNETES / "examples")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "researcher.proto" in result.stderr
    base = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUBERNETES / "base")], capture_output=True, check=False
    )
    assert base.returncode == 0


def test_base_has_every_control_plane_object():
    kinds = sorted(o["kind"] for o in render("base"))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    assert {o["metadata"].get("namespace") for o in render("base") if o["kind"] != "Namespace"} == {"agentmesh"}


def test_control_plane_probes_use_grpc_health_on_its_grpc_port():
    cp = container(render("base"), "control-plane")
    ports = {p["name"]: p["containerPort"] for p in cp["ports"]}
    assert ports == {"grpc": 15010, "http": 18080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert cp[probe]["grpc"] == {"port": 15010}, probe
    assert f"--listen=0.0.0.0:{ports['grpc']}" in cp["args"]
    assert f"--http=0.0.0.0:{ports['http']}" in cp["args"]


def test_control_plane_args_are_options_of_the_command():
    cp = container(render("base"), "control-plane")
    assert cp["args"][0] == "control-plane"
    known = {opt for param in control_plane_command.params for opt in param.opts}
    for arg in cp["args"][1:]:
        assert arg.split("=", 1)[0] in known, arg
    env = {e["name"]: e for e in cp["env"]}
    assert env["AGENTMESH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    config_map = only(render("base"), "ConfigMap")
    for entry in env.values():
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == config_map["metadata"]["name"]
            assert ref["key"] in config_map["data"]


def test_control_plane_is_locked_down_and_keeps_its_database():
    objects = render("base")
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    cp = container(objects, "control-plane")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == RUN_AS
    assert cp["securityContext"]["readOnlyRootFilesystem"] is True
    assert cp["securityContext"]["allowPrivilegeEscalation"] is False
    assert cp["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert cp["resources"]["requests"] and cp["resources"]["limits"]["memory"]
    db = next(a for a in cp["args"] if a.startswith("--db=")).removeprefix("--db=")
    mounts = {m["mountPath"]: m["name"] for m in cp["volumeMounts"]}
    volume = mounts[str(Path(db).parent)]
    [claim] = [v for v in pod["volumes"] if v["name"] == volume]
    assert claim["persistentVolumeClaim"]["claimName"] == only(objects, "PersistentVolumeClaim")["metadata"]["name"]
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # one SQLite writer
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_service_and_disruption_budget_select_the_control_plane():
    objects = render("base")
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 15010, "http": 18080}
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_injected_example_is_valid_and_matches_its_config_map(tmp_path):
    objects = render("examples")
    result = inject(read_documents(yaml.safe_dump_all(objects), "examples"), SidecarOptions())
    assert result.warnings == []
    assert [str(r) for r in result.reports if r.outcome == "injected"] == ["deployment/researcher injected"]
    for obj in result.bodies:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    [deployment] = [b for b in result.bodies if b["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    [config_volume] = [v for v in volumes if v["name"] == "agentmesh-config"]
    assert config_volume["configMap"]["name"] == only(objects, "ConfigMap")["metadata"]["name"]
    service = only(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == INBOUND_PORT


def test_the_example_config_map_is_a_working_agent_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("POD_IP", "10.0.3.7")  # from the downward API in the injected sidecar
    data = only(render("examples"), "ConfigMap")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    bootstrap = Bootstrap.load(tmp_path / "agent.yaml")
    assert bootstrap.listen.inbound == f"0.0.0.0:{INBOUND_PORT}"
    assert bootstrap.listen.admin == f"0.0.0.0:{ADMIN_PORT}"
    assert bootstrap.upstream.url == "http://127.0.0.1:8201"
    contract = load_contract(bootstrap)
    assert "/research.v1.Researcher/Search" in contract.methods
    agent = container(render("examples"), "researcher")
    assert agent["args"][agent["args"].index("--port") + 1] == "8201"
    assert "ports" not in agent  # the untouched agent listens on loopback only


def test_autoscaler_uses_the_sidecar_in_flight_gauge_through_the_adapter_rule():
    objects = render("examples")
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == only(objects, "Deployment")["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert "replicas" not in only(objects, "Deployment")["spec"]  # the HPA owns the count

    values = yaml.safe_load((KUBERNETES / "examples" / "prometheus-adapter-values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].startswith(name + "{")
    assert 'direction="inbound"' in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    stats = SidecarStats(agent="researcher", version="v1", team="research")
    stats.route(
        direction="inbound", source_agent="a", destination_agent="researcher", destination_version="v1", rpc_method="/m"
    ).start()
    body, _ = stats.exposition("text/plain")
    assert f'{name}{{destination_agent="researcher",direction="inbound"}} 1.0' in body.decode()


# --- identity -----------------------------------------------------------------------------------------------------


def args_of(container_spec: dict[str, Any]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in container_spec["args"][1:])


def test_control_plane_keeps_its_ca_on_the_database_volume():
    cp = container(render("base"), "control-plane")
    args = args_of(cp)
    db_dir = Path(args["--db"]).parent
    assert Path(args["--ca-dir"]).is_relative_to(db_dir)  # on the PersistentVolumeClaim, backed up with the database
    assert "--ca-cert" not in args and "--ca-key" not in args  # its own root unless components/root-ca is added
    data = only(render("base"), "ConfigMap")["data"]
    env = {
        e["name"]: e["valueFrom"]["configMapKeyRef"]["key"]
        for e in cp["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    }
    assert args["--trust-domain"] == "$(TRUST_DOMAIN)" and data[env["TRUST_DOMAIN"]] == "agentmesh.local"
    assert args["--workload-cert-ttl"] == "$(WORKLOAD_CERT_TTL)" and data[env["WORKLOAD_CERT_TTL"]] == "24h"


def test_the_root_ca_component_mounts_the_secret_and_passes_it(tmp_path):
    objects = render_with_root_ca(tmp_path)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    cp = container(objects, "control-plane")
    args = args_of(cp)
    known = {opt for param in control_plane_command.params for opt in param.opts}
    assert set(args) <= known
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in cp["volumeMounts"] if m["name"] == "ca-root"]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == "ca-root"]
    secret = volume["secret"]
    assert secret["secretName"] == "agentmesh-ca-root"
    assert {i["key"]: i["path"] for i in secret["items"]} == {"ca.crt": "ca.crt", "ca.key": "ca.key"}
    assert args["--ca-cert"] == f"{mount['mountPath']}/ca.crt"
    assert args["--ca-key"] == f"{mount['mountPath']}/ca.key"
    # Group-readable only: the pod's fsGroup is the control plane's group.
    assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == RUN_AS
    # Everything else is the base's.
    base = only(render("base"), "Deployment")["spec"]["template"]["spec"]
    assert cp["args"][: len(base["containers"][0]["args"])] == base["containers"][0]["args"]


def write_root_ca(folder: Path) -> bytes:
    """A user root CA as an operator would put it into the agentmesh-ca-root Secret (ca.crt, ca.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp root")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (folder / "ca.crt").write_bytes(pem)
    (folder / "ca.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for file in folder.iterdir():
        file.chmod(0o440)
    return pem


@pytest.mark.parametrize("variant", ["own root", "root-ca component"])
def test_the_rendered_control_plane_arguments_start_a_ca_on_the_volume(tmp_path, variant):
    """The container's args as Kubernetes would expand them, each mount a folder here, run as a real process."""
    objects = render("base") if variant == "own root" else render_with_root_ca(tmp_path)
    cp = container(objects, "control-plane")
    data = only(objects, "ConfigMap")["data"]
    variables = {
        e["name"]: data[e["valueFrom"]["configMapKeyRef"]["key"]]
        for e in cp["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    }
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in cp["volumeMounts"]}
    root_pem = write_root_ca(mounts["/etc/agentmesh/ca-root"]) if variant != "own root" else None
    grpc_port, http_port = free_port(), free_port()

    def local(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: variables[m[1]], arg)
        option, _, value = arg.partition("=")
        if option == "--listen":
            return f"--listen=127.0.0.1:{grpc_port}"
        if option == "--http":
            return f"--http=127.0.0.1:{http_port}"
        for mount_path, folder in mounts.items():
            if value.startswith(mount_path + "/"):
                folder.mkdir(exist_ok=True)
                return f"{option}={folder}{value[len(mount_path) :]}"
        return arg

    argv = [sys.executable, "-m", "agentmesh.cli", *(local(a) for a in cp["args"]), "--token", ADMIN]
    process = start(f"control-plane-{variant.replace(' ', '-')}", argv, tmp_path)
    try:
        wait_for(lambda: grpc_serving(f"127.0.0.1:{grpc_port}"), what="control plane serving", process=process)
        ca_dir = mounts["/var/lib/agentmesh"] / "ca"
        if root_pem is None:
            assert (ca_dir / "root-cert.pem").is_file() and (ca_dir / "root-key.pem").is_file()
        else:
            assert (ca_dir / "intermediate-cert.pem").is_file() and not (ca_dir / "root-key.pem").exists()
        bundle = subprocess.run(
            [sys.executable, "-m", "agentmesh.cli", "ca", "bundle", "--control-plane", f"127.0.0.1:{grpc_port}"],
            env={**os.environ, "AGENTMESH_TOKEN": ADMIN},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert bundle.returncode == 0, bundle.stderr
        if root_pem is not None:
            assert bundle.stdout.strip() == root_pem.strip()  # peers trust the user's root
        else:
            assert bundle.stdout.strip() == (ca_dir / "root-cert.pem").read_bytes().strip()
    finally:
        assert process.stop() == 0, process.output()


def injected_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The example after `agentmesh inject`: its pod spec and its sidecar."""
    result = inject(read_documents(yaml.safe_dump_all(render("examples")), "examples"), SidecarOptions())
    [deployment] = [b for b in result.bodies if b["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [sidecar] = [c for c in spec["initContainers"] if c["name"] == "agentmesh-sidecar"]
    return spec, sidecar


def test_the_injected_sidecar_reads_its_token_and_keeps_its_identity_where_agent_yaml_says(tmp_path, monkeypatch):
    spec, sidecar = injected_example()
    data = only(render("examples"), "ConfigMap")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    env = {e["name"]: e for e in sidecar["env"]}
    assert JOIN_TOKEN_ENV == SIDECAR_JOIN_TOKEN_ENV
    ref = env[JOIN_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "researcher-agentmesh-join-token", "key": "token"}  # not optional: no token, no start
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"

    monkeypatch.setenv("POD_IP", "10.0.3.7")
    bootstrap = Bootstrap.load(tmp_path / "agent.yaml")
    assert bootstrap.control_plane is not None
    assert bootstrap.control_plane.advertise_address == f"10.0.3.7:{INBOUND_PORT}"  # each replica, directly
    service = only(render("base"), "Service")
    grpc_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    namespace = service["metadata"]["namespace"]
    assert bootstrap.control_plane.address == f"{service['metadata']['name']}.{namespace}.svc:{grpc_port}"
    assert str(bootstrap.identity.dir) == IDENTITY_DIR
    [mount] = [m for m in sidecar["volumeMounts"] if m["mountPath"] == IDENTITY_DIR]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    plan = plan_identity(bootstrap, environ={JOIN_TOKEN_ENV: "amjt.a.b"}, persisted=lambda _: False)
    assert plan.enabled and plan.mode == "strict" and plan.join_token == "amjt.a.b"


def test_an_unset_pod_ip_is_a_precise_config_error(tmp_path, monkeypatch):
    for name, text in only(render("examples"), "ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    monkeypatch.delenv("POD_IP", raising=False)
    with pytest.raises(Exception, match=r"control_plane\.advertise_address: \$\{POD_IP\}.*POD_IP is not set"):
        Bootstrap.load(tmp_path / "agent.yaml")


def documented_secret_command() -> str:
    """The `agentmesh token create ... | kubectl create secret ...` pipeline from the example's kustomization."""
    comment = [
        line.removeprefix("#").strip()
        for line in (KUBERNETES / "examples" / "kustomization.yaml").read_text().splitlines()
        if line.startswith("#")
    ]
    start = next(i for i, line in enumerate(comment) if line.startswith("agentmesh token create"))
    lines = [comment[start]]
    while lines[-1].endswith("\\"):
        lines.append(comment[start + len(lines)])
    return " ".join(line.removesuffix("\\").strip() for line in lines)


async def enroll(address: str, token: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        material = await IdentityClient(channel).enroll(token, generate_key())
    return material.spiffe_id.uri


def test_the_documented_secret_pipeline_makes_the_secret_the_sidecar_reads(tmp_path):
    command = documented_secret_command()
    assert "--from-file=token=/dev/stdin" in command
    control_plane = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    try:
        path = os.pathsep.join([str(tool("kubectl").parent), str(Path(sys.executable).parent), os.environ["PATH"]])
        env = control_plane.env(PATH=path)
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{command} --dry-run=client -o yaml"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        secret = yaml.safe_load(result.stdout)
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
        _, sidecar = injected_example()
        [ref] = [e["valueFrom"]["secretKeyRef"] for e in sidecar["env"] if e["name"] == JOIN_TOKEN_ENV]
        assert secret["metadata"] == {
            "name": ref["name"],
            "namespace": only(render("examples"), "Namespace")["metadata"]["name"],
        }
        token = base64.b64decode(secret["data"][ref["key"]]).decode().strip()
        uses = int(command.split("--uses ")[1].split()[0])
        for _ in range(uses):
            assert (
                asyncio.run(enroll(control_plane.address, token))
                == "spiffe://agentmesh.local/team/research/agent/researcher"
            )
        with pytest.raises(IdentityError, match=f"already used {uses} of {uses}"):
            asyncio.run(enroll(control_plane.address, token))
    finally:
        control_plane.stop()
