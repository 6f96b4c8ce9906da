"""The Kubernetes manifests of cluster/k8s/ (KubeRay RayCluster + RayJob, MLflow, storage) against the code.

No cluster is needed: the manifests are parsed with yaml.safe_load_all and checked for what the study
relies on (kinds/apiVersions the KubeRay operator and Kubernetes serve, GPU workers whose Ray resources
match their nvidia.com/gpu limits and pack the RayJob's fractional trials, the study directory on a
ReadWriteMany claim mounted on the head and every worker, credentials only from Secrets). Every `dpl`
command written in them is parsed by dpl's own argument parser, and the study a `dpl run` starts is
resolved by `dpl plan` on the same arguments (a subprocess, as a user would run it), so a misspelt flag or
preset in a manifest fails here instead of on the cluster.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "cluster" / "k8s"
NAMESPACE = "dpl-study"
#: kind -> the apiVersion it must use (KubeRay's stable API is ray.io/v1)
API_VERSIONS = {
    "Namespace": "v1", "PersistentVolumeClaim": "v1", "Service": "v1", "Deployment": "apps/v1",
    "RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "StatefulSet": "apps/v1",
}
#: trials of each preset (14 networks x 4 points per benchmark, 5 benchmarks, 4 pixel baselines)
TRIALS = {"paper": 284, "corrected": 284}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


# ------------------------------------------------------------------------------------------ helpers


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every YAML document under cluster/k8s/, in apply order."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc.get("kind") == kind]


def one(kind: str) -> dict[str, Any]:
    docs = of_kind(kind)
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def strings(node: Any) -> Iterator[str]:
    """Every string value in a document (commands hide in entrypoint, command, args)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def dpl_commands(text: str) -> list[list[str]]:
    """The argv (after `dpl`) of each `dpl ...` simple command in a shell string, wrappers such as
    `flock LOCK dpl ...` included."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in [*lexer, ";"]:
        if token in SHELL_OPERATORS:
            if "dpl" in current:
                commands.append(current[current.index("dpl") + 1:])
            current = []
        else:
            current.append(token)
    return commands


def all_dpl_commands() -> list[tuple[str, list[str]]]:
    return [(name, argv) for name, doc in manifests() for s in strings(doc) for argv in dpl_commands(s)]


def option_value(argv: list[str], flag: str) -> str:
    """The value of `--flag V` or `--flag=V` in argv."""
    for i, token in enumerate(argv):
        if token == flag:
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{flag} missing from dpl {' '.join(argv)}")


def plan_argv(run_argv: list[str]) -> list[str]:
    """`dpl run ARGS` -> `dpl plan ARGS`: the options `plan` does not take (run-only: --tracking-uri,
    --address, --gpus-per-trial, ...) are dropped with their values; the spec options stay as written.
    Which options are run-only is read from dpl's parser, not listed here."""
    from study.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    run_options = {s: a for a in subparsers["run"]._actions for s in a.option_strings}
    plan_options = {s for a in subparsers["plan"]._actions for s in a.option_strings}
    out, i = [], 1  # argv[0] is "run"
    while i < len(run_argv):
        token = run_argv[i]
        flag = token.split("=", 1)[0]
        takes_value = flag in run_options and run_options[flag].nargs != 0 and "=" not in token
        if flag in run_options and flag not in plan_options:
            i += 2 if takes_value else 1
            continue
        out.append(token)
        if takes_value:
            out.append(run_argv[i + 1])
            i += 1
        i += 1
    return ["plan", *out]


def pod_specs(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group, rayStartParams, pod spec) for the head and each worker group of a RayCluster."""
    spec = cluster["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [(name, g.get("rayStartParams", {}), g["template"]["spec"]) for name, g in groups]


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def mounts_of_claims(pod: dict[str, Any]) -> dict[str, str]:
    """mountPath -> PVC claim name for the Ray container of a pod spec."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for m in ray_container(pod).get("volumeMounts", [])
            if m["name"] in claims}


def under(path: str, mount: str) -> bool:
    return PurePosixPath(mount) == PurePosixPath(path) or PurePosixPath(mount) in PurePosixPath(path).parents


def rayjob_run_argv() -> list[str]:
    argv = [a for s in [one("RayJob")["spec"]["entrypoint"]] for a in dpl_commands(s)]
    assert len(argv) == 1 and argv[0][0] == "run", f"the RayJob's entrypoint must be one `dpl run`: {argv}"
    return argv[0]


# -------------------------------------------------------------------------------------------- tests


def test_every_manifest_parses_with_a_served_kind_and_api_version() -> None:
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} == set(API_VERSIONS), "a kind is missing or unexpected"
    for name, doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], f"{name}: {doc['kind']} needs {API_VERSIONS[doc['kind']]}"
        assert doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['kind']} outside {NAMESPACE}"


def test_gpu_workers_request_gpus_and_pack_the_rayjobs_fractional_trials() -> None:
    cluster = one("RayCluster")
    run = rayjob_run_argv()
    gpus_per_trial = float(option_value(run, "--gpus-per-trial"))
    cpus_per_trial = float(option_value(run, "--cpus-per-trial"))
    groups = pod_specs(cluster)
    assert groups[0][1].get("num-gpus") == "0" and groups[0][1].get("num-cpus") == "0", "trials must not land on the head"
    workers = groups[1:]
    assert workers, "no worker group"
    for group, params, pod in workers:
        limits = ray_container(pod)["resources"]["limits"]
        gpus = int(limits["nvidia.com/gpu"])
        assert gpus >= 1, f"{group}: a GPU worker must request nvidia.com/gpu"
        assert int(params["num-gpus"]) == gpus, f"{group}: Ray's num-gpus must equal the nvidia.com/gpu limit"
        assert float(params["num-cpus"]) == float(limits["cpu"]), f"{group}: num-cpus must equal the cpu limit"
        trials_per_gpu = round(1 / gpus_per_trial)
        assert trials_per_gpu > 1, "the RayJob should pack fractional trials"
        assert float(params["num-cpus"]) >= gpus * trials_per_gpu * cpus_per_trial, (
            f"{group}: {params['num-cpus']} CPUs cannot hold {trials_per_gpu} trials x {cpus_per_trial} CPUs per GPU")


def test_study_directory_is_on_a_read_write_many_claim_mounted_on_head_and_workers() -> None:
    run = rayjob_run_argv()
    storage, data_root = option_value(run, "--storage"), option_value(run, "--data-root")
    modes = {c["metadata"]["name"]: c["spec"]["accessModes"] for c in of_kind("PersistentVolumeClaim")}
    for group, _, pod in pod_specs(one("RayCluster")):
        claims = [claim for mount, claim in mounts_of_claims(pod).items() if under(storage, mount)]
        assert claims, f"{group}: the study directory {storage} is not on a mounted claim"
        assert "ReadWriteMany" in modes[claims[0]], f"{group}: {claims[0]} must be ReadWriteMany"
        if group != "head":
            mounts = [m["mountPath"] for m in ray_container(pod)["volumeMounts"]]
            assert any(under(data_root, m) for m in mounts), f"{group}: --data-root {data_root} is not mounted"


def test_rayjob_tracks_to_the_mlflow_service_and_selects_the_cluster() -> None:
    job, cluster = one("RayJob"), one("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    uri = option_value(rayjob_run_argv(), "--tracking-uri")
    service = next(s for s in of_kind("Service") if s["metadata"]["name"] == "mlflow")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "MLflow binds 0.0.0.0: keep it in the cluster"
    assert uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    recipe = image_path(mlflow_container()["command"][1])
    assert recipe == ROOT / "cluster" / "mlflow-server.sh" and "exec mlflow server" in recipe.read_text()


def image_path(path: str) -> Path:
    """The repository file that a path inside the image is (the Dockerfile copies the repository to one place)."""
    dest = re.search(r"^COPY\b.*\s\.\s+(\S+)$", (K8S / "Dockerfile").read_text(), re.M).group(1)
    return ROOT / PurePosixPath(path).relative_to(dest)


def mlflow_container() -> dict[str, Any]:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_mlflow_stores_runs_in_postgresql_with_the_password_only_from_a_secret() -> None:
    """The Deployment's backend-store URI names the PostgreSQL Service, user and database of 15-postgres.yaml,
    carries no password, and the server's PGPASSWORD is the same Secret key PostgreSQL's password comes from;
    the image has the driver."""
    import urllib.parse

    env = env_of(mlflow_container())
    uri = urllib.parse.urlparse(env["MLFLOW_BACKEND_STORE_URI"])
    (db,) = of_kind("StatefulSet")
    db_env = env_of(db["spec"]["template"]["spec"]["containers"][0])
    service = next(s for s in of_kind("Service") if s["spec"]["selector"] == db["spec"]["selector"]["matchLabels"])
    assert uri.scheme == "postgresql" and uri.password is None
    assert (uri.hostname, uri.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert (uri.username, uri.path.lstrip("/")) == (db_env["POSTGRES_USER"], db_env["POSTGRES_DB"])
    secret = env["PGPASSWORD"]["secretKeyRef"]
    assert {k: secret[k] for k in ("name", "key")} == db_env["POSTGRES_PASSWORD"]["secretKeyRef"]
    # optional for the server (its recipe then refuses in one line), required by PostgreSQL (it never starts)
    assert secret.get("optional") is True and "optional" not in db_env["POSTGRES_PASSWORD"]["secretKeyRef"]
    assert '"/home/ray/dpl-study[postgres]"' in (K8S / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^postgres = \[\s*"psycopg\[binary\]', pyproject, re.M), "the postgres extra lost its driver"


def test_every_dpl_command_parses_and_the_rayjob_study_plans_to_the_preset_trial_count(tmp_path: Path) -> None:
    from study.cli import build_parser

    commands = all_dpl_commands()
    verbs = {argv[0] for _, argv in commands}
    assert {"run", "data"} <= verbs, f"expected the RayJob's dpl run and the data fetch, found {verbs}"
    for name, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{name}: `dpl {shlex.join(argv)}` is not a valid dpl command (argparse exit {exc.code})")
    env = {k: v for k, v in os.environ.items() if k != "DPL_DATA_ROOT"}
    for name, argv in commands:
        if argv[0] != "run":
            continue
        plan = plan_argv(argv)
        proc = subprocess.run([sys.executable, "-m", "study.cli", *plan, "--no-compute", "--json"], cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: `dpl {shlex.join(plan)}` failed: {proc.stderr.strip()[-500:]}"
        report = json.loads(proc.stdout)
        preset = option_value(argv, "--preset")
        assert report["counts"]["total"] == TRIALS[preset], f"{name}: {preset} plans {report['counts']['total']} trials"
        assert report["storage"] == option_value(argv, "--storage")
        assert report["data_root"] == option_value(argv, "--data-root")
        assert not any(tmp_path.iterdir()), "dpl plan wrote files"


SECRET_KEY = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key)")
#: `password: hunter2`, `TOKEN=abc`; not `${MLFLOW_AUTH_ADMIN_PASSWORD:-}` (a shell expansion) or `key: password,`
SECRET_LINE = re.compile(r"(?i)(password|passwd|token)\w*\s*[:=]\s*(?![-$({])['\"]?[^\s'\",}]+")
URI_CREDENTIALS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def _mappings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _mappings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _mappings(v)


def test_no_manifest_contains_a_literal_secret() -> None:
    assert not of_kind("Secret"), "Secrets are created with kubectl (cluster/README.md), never committed"
    for name, doc in manifests():
        for m in _mappings(doc):
            if "name" in m and ("value" in m or "valueFrom" in m) and SECRET_KEY.search(str(m["name"])):
                assert "value" not in m and "secretKeyRef" in m["valueFrom"], (
                    f"{name}: env {m['name']} must come from a Secret (valueFrom.secretKeyRef), not a literal")
            for key, value in m.items():
                if SECRET_KEY.search(str(key)) and isinstance(value, (str, int, float)):
                    pytest.fail(f"{name}: literal value under {key!r}")
        for s in strings(doc):
            assert not URI_CREDENTIALS.search(s), f"{name}: credentials in a URI: {s!r}"
    for path in sorted(K8S.glob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            assert not SECRET_LINE.search(code), f"{path.name}:{n}: a literal secret: {line.strip()}"


def test_image_matches_the_cluster_and_the_project_pins() -> None:
    """The Dockerfile's Ray is the RayCluster's rayVersion (KubeRay requires them equal), and its MLflow is the
    project's pin with the `auth` extra (the server's basic auth imports Flask-WTF, absent from plain mlflow)."""
    dockerfile = (K8S / "Dockerfile").read_text()
    ray_version = one("RayCluster")["spec"]["rayVersion"]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py311\S*$", dockerfile, re.M), ray_version
    pinned = re.search(r'"mlflow==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f'"mlflow[auth]=={pinned}"' in dockerfile
    torch_pin = re.search(r'"torch[^"]*<=([^",]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={torch_pin}" in dockerfile
