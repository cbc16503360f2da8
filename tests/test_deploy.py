"""The deployment files shipped under docs/deploy and the Dockerfile: Kubernetes objects valid against the
API schemas (offline: kubernetes-validate bundles them), consistent with one another, and commands that our
CLI parses as it would at run time (options, types, environment variables and --shard's index).

The image itself is built and run by .ci/container (it needs root and dockerd)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from batch.cli import main as batch_cli
from batch.shard import Shard
from worker.cli import main as worker_cli

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "docs" / "deploy" / "kubernetes"
SLURM = ROOT / "docs" / "deploy" / "slurm"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
# The oldest Kubernetes the manifests claim (the Job's backoffLimitPerIndex is on by default from 1.29)
# and the newest whose schemas kubernetes-validate bundles.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CLIS = {"batch": batch_cli, "worker": worker_cli}
MiB = 1 << 20
# Per worker process beyond what its limits let calls hold: the interpreter, its libraries and the face
# model (132 MiB resident for a one-process worker after classifying the demo; docs/operations.md), with room
# for the parent process of a multi-process worker.
PROCESS_BASE_MIB = 200


def objects() -> dict[str, dict]:
    """Every object in the Kubernetes manifests, by kind (one of each)."""
    found: dict[str, dict] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"{path.name}: a second {doc['kind']}"
            found[doc["kind"]] = doc
    return found


def parse(argv: list[str]) -> click.Context:
    """Parse a command line the way `batch ...` or `worker ...` would, down to its subcommand, without running
    it: unknown options, bad values and callbacks (--shard) raise click's usage errors."""
    group = CLIS[argv[0]]
    ctx = click.Context(group, info_name=argv[0], **group.context_settings)
    args = argv[1:]
    while isinstance(ctx.command, click.Group):
        name, *args = args
        command = ctx.command.get_command(ctx, name)
        assert command is not None, f"{argv[0]} has no command {name!r}"
        ctx = command.make_context(name, args, parent=ctx)
    return ctx


def container_argv(container: dict, env: dict[str, str]) -> list[str]:
    """The container's command line, with Kubernetes' $(VAR) expansion from its environment."""
    env = {**{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}, **env}
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a)
            for a in container.get("command", []) + container.get("args", [])]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No option leaks in from this process's environment; set the container's with monkeypatch."""
    for name in list(os.environ):
        if name.startswith(("BATCH_", "WORKER_", "JOB_COMPLETION_INDEX", "SLURM_")):
            monkeypatch.delenv(name)
    return monkeypatch


def parse_container(container: dict, monkeypatch: pytest.MonkeyPatch, **env: str) -> click.Context:
    for e in container.get("env", []):
        monkeypatch.setenv(e["name"], e["value"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse(container_argv(container, env))


def quantity(text: str) -> float:
    """A Kubernetes quantity in bytes (memory) or cores (cpu)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "m": 1e-3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_kubernetes_manifest_validates_against_the_api_schemas(path: Path, version: str) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        # strict: a misspelt field (readinesProbe) is an error, not ignored as the API server would
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_catches_a_misspelt_field() -> None:
    deployment = objects()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError, match="prot"):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_we_ship_the_objects_the_fleet_and_the_job_need() -> None:
    assert set(objects()) == {"Namespace", "PersistentVolumeClaim", "Deployment", "Service",
                              "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "NetworkPolicy"}


def test_workers_serving_references_without_client_certificates_admit_only_the_drivers(
        clean_env: pytest.MonkeyPatch) -> None:
    """Such a worker starts only with --allow-unauthenticated-references; then a NetworkPolicy over its pods
    lets only the driver Job's pods reach the gRPC port."""
    found = objects()
    deployment, job, policy = found["Deployment"], found["Job"], found["NetworkPolicy"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    p = parse_container(container, clean_env).params
    assert p["data_roots"] or p["output_roots"]
    if p["tls_client_ca"] is not None:
        return
    assert p["allow_unauthenticated_references"]
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "Ingress" in policy["spec"]["policyTypes"]
    grpc_rules = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": p["port"]} in r["ports"]]
    assert [peer for r in grpc_rules for peer in r["from"]] == [
        {"podSelector": {"matchLabels": job["spec"]["template"]["metadata"]["labels"]}}]


def test_the_worker_deployment_serves_drains_and_fits_its_resources(clean_env: pytest.MonkeyPatch) -> None:
    pod = objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = parse_container(container, clean_env)
    assert ctx.command.name == "serve" and ctx.parent.command is worker_cli
    p = ctx.params
    # the kubelet's SIGKILL comes after calls in flight have had --grace
    assert pod["terminationGracePeriodSeconds"] > p["grace"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": p["port"], "metrics": p["metrics_port"]}
    assert p["host"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == p["port"], probe  # Kubernetes' own gRPC health probe
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits == requests  # Guaranteed QoS: the worker is not the first to go under memory pressure
    assert p["processes"] == quantity(limits["cpu"])  # one server process per CPU
    # docs/operations.md's worst case per process, for the limits in args
    message = p["max_message_mb"] * MiB
    per_process = (p["max_concurrent_rpcs"] * 2 * message + p["threads"] * 2 * 4 * p["max_pixels"]
                   + 4 * max(message, 16 * MiB) + PROCESS_BASE_MIB * MiB)
    assert p["processes"] * per_process <= quantity(limits["memory"])
    assert p["max_inflight_mb"] * MiB <= p["max_concurrent_rpcs"] * 2 * message
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tmp"] == "/tmp"  # --metrics-port writes there; the root is read-only
    roots = [Path(r) for r in p["data_roots"] + p["output_roots"]]
    assert all(r.is_relative_to(mounts["data"]) for r in roots)


def test_the_service_autoscaler_and_budget_cover_the_worker_pods() -> None:
    found = objects()
    deployment = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = found["Service"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS record per ready pod
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    namespaces = {o["metadata"].get("namespace") for o in found.values() if o["kind"] != "Namespace"}
    assert namespaces == {found["Namespace"]["metadata"]["name"]}


def test_the_driver_job_runs_every_share_of_one_manifest_against_the_service(
        clean_env: pytest.MonkeyPatch) -> None:
    found = objects()
    job = found["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    service = found["Service"]
    address = (f"dns:///{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
               f"{service['spec']['ports'][0]['port']}")
    worker = parse_container(found["Deployment"]["spec"]["template"]["spec"]["containers"][0], clean_env).params
    outs = set()
    for index in range(job["completions"]):
        # the same command line in every pod; the Job controller sets JOB_COMPLETION_INDEX
        ctx = parse_container(container, clean_env, JOB_COMPLETION_INDEX=str(index))
        assert ctx.command.name == "run" and ctx.parent.command is batch_cli
        p = ctx.params
        assert p["shard"] == Shard(index, job["completions"])
        assert p["workers"] == (address,)
        # by reference: the workers read the manifest's folder and write under --out on the same mount
        assert p["references"]
        assert any(Path(p["manifest"]).is_relative_to(r) for r in worker["data_roots"])
        assert any(Path(p["out"]).is_relative_to(r) for r in worker["output_roots"])
        outs.add(p["out"])
    assert len(outs) == job["completions"]  # a results folder per share
    clean_env.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(click.BadParameter, match="JOB_COMPLETION_INDEX"):
        parse(container_argv(container, {}))  # outside a Job: a usage error, not share 0


def test_pods_run_as_the_images_non_root_user_on_a_read_only_root(clean_env: pytest.MonkeyPatch) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    for kind in ("Deployment", "Job"):
        pod = objects()[kind]["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] and (str(security["runAsUser"]), str(security["runAsGroup"])) == user
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"], kind
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, kind
    # the image's default command is one worker serve accepts
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert parse(json.loads(cmd)).command.name == "serve"


def test_the_slurm_array_script_runs_every_share_of_one_manifest(
        tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    (script,) = SLURM.glob("*.sbatch")
    low, high = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script.read_text(), re.M).groups())
    # bash runs the script as Slurm would; a `batch` first on PATH records the command line it gets
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = bin_dir / "batch"
    record.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "json.dump(sys.argv[1:], open(os.environ['ARGV_FILE'], 'w'))\n")
    record.chmod(0o755)
    outs = set()
    for task in range(low, high + 1):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
               "SLURM_ARRAY_TASK_COUNT": str(high - low + 1)}
        argv_file = tmp_path / f"argv-{task}.json"
        subprocess.run(["bash", str(script)], check=True, timeout=30,
                       env={**env, "ARGV_FILE": str(argv_file), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        for name, value in env.items():
            clean_env.setenv(name, value)
        ctx = parse(["batch", *json.loads(argv_file.read_text())])
        assert ctx.command.name == "run"
        assert ctx.params["shard"] == Shard(task - low, high - low + 1)
        outs.add(ctx.params["out"])
    assert len(outs) == high - low + 1
