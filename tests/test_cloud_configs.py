"""Offline checks of the cloud launch files: ``cluster.yaml`` (Ray's cluster launcher on AWS),
``k8s/rayjob.yaml`` (KubeRay) and the pipelines and commands that ``docs/cloud.md`` and the
README give for them. Nothing here opens a connection or needs cloud credentials: Ray's
validator, botocore's EC2 model and the RayJob schema below all work on the files alone."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from ssl_ray.config import load_config, load_raw
from ssl_ray.tune.space import load_space

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
RAYJOB = ROOT / "k8s" / "rayjob.yaml"
CLOUD_DOC = ROOT / "docs" / "cloud.md"
README = ROOT / "README.md"
CLOUD_PIPELINE = ROOT / "pipelines" / "simclr_s3_shards.yaml"

# Credentials must come from instance profiles or IRSA, never from a file in the repository.
CREDENTIAL_WORDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "*", ""}


def _cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


def _rayjob() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(RAYJOB.read_text()) if doc]
    jobs = [doc for doc in docs if doc.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"{RAYJOB}: expected one RayJob, found {len(jobs)}"
    return jobs[0]


def _ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it first calls AWS: fill in the provider's
    defaults, merge the setup commands, check the Docker section and every node type's worker
    bounds (prepare_config), then the JSON schema and the cross-field rules (validate_config).
    The next step, bootstrap_config, is where the launcher talks to AWS, so it is left out."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _ray_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [dep for dep in dependencies if re.match(r"ray(\[|==)", dep)]
    return pin.split("==")[1]


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _no_credentials(path: Path) -> None:
    text = path.read_text()
    for word in CREDENTIAL_WORDS:
        assert word not in text.lower(), f"{path.name} mentions {word}: credentials never go in a file"
    assert not ACCESS_KEY_ID.search(text), f"{path.name} holds something shaped like an AWS access key id"


# ---------------------------------------------------------------------------------------------
# cluster.yaml


def test_cluster_yaml_passes_rays_own_validator():
    config = _cluster()
    prepared = _ray_validate(config)
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]
    # The launcher knows the provider: its node provider class imports (boto3, no call made).
    from ray.autoscaler._private.providers import _NODE_PROVIDERS

    assert _NODE_PROVIDERS["aws"](prepared["provider"]).__name__ == "AWSNodeProvider"


@pytest.mark.parametrize(
    "break_it, error",
    [
        (lambda c: c.update(max_workers="lots"), "is not of type 'integer'"),
        (lambda c: c.update(max_worker=4), "Additional properties are not allowed"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="4"), "is not of type 'integer'"),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), "'node_config' is a required property"),
        (lambda c: c["provider"]["security_group"].update(Ingress=[]), "Additional properties are not allowed"),
        (lambda c: c.update(head_node_type="no-such-type"), "must be one of `available_node_types`"),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=99), "smaller than the sum of"),
    ],
    ids=["wrong-type", "unknown-key", "resource-as-string", "no-node-config", "bad-sg-key", "bad-head", "min-over-max"],
)
def test_rays_validator_rejects_a_broken_copy(break_it, error):
    """The validator is not a rubber stamp: a copy of cluster.yaml with one mistake fails."""
    broken = _cluster()
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(error)):
        _ray_validate(broken)


def test_cluster_node_configs_are_valid_ec2_run_instances_requests():
    """Ray passes each node_config to EC2 RunInstances as it is; botocore's bundled EC2 model
    checks the names and types offline (Ray fills in MinCount, MaxCount, subnets, groups)."""
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    shape = get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in _cluster()["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_cluster_uses_instance_profiles_and_no_keys():
    _no_credentials(CLUSTER)
    config = _cluster()
    assert "aws_credentials" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::[\w-]+:instance-profile/[\w+=,.@/-]+", profile.get("Arn", "")), (
            f"{name}: S3 access comes from an instance profile (IamInstanceProfile.Arn)"
        )


def test_cluster_node_types_head_gpu_and_cpu_workers():
    config = _cluster()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), "no training or decoding on the head"
    workers = _worker_types(config)
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu_only = [t for t in workers.values() if t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU")]
    assert gpu, "a GPU worker type with GPU resources"
    assert cpu_only, "a CPU-only worker type for Ray Data"
    assert isinstance(config["max_workers"], int) and config["idle_timeout_minutes"] > 0
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name


def test_cluster_fits_the_cloud_pipeline():
    """The pipeline's Ray Train workers (1 GPU + cpus_per_worker CPUs each) fit the GPU nodes
    the autoscaler may start."""
    train = load_config(CLOUD_PIPELINE).train
    gpu_types = [t for t in _worker_types(_cluster()).values() if t["resources"].get("GPU", 0) > 0]
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types) >= train.num_workers
    for node_type in gpu_types:
        resources = node_type["resources"]
        assert resources["GPU"] * train.cpus_per_worker < resources["CPU"], "leave CPUs for decoding"


def test_cluster_images_match_the_pinned_ray_and_python():
    config = _cluster()
    images = [config["docker"].get(key) for key in ("image", "head_image", "worker_image")]
    images += [t.get("docker", {}).get("worker_image") for t in config["available_node_types"].values()]
    images = [image for image in images if image]
    assert images
    assert _ray_pin() == ray.__version__
    for image in images:
        assert f":{ray.__version__}-py311" in image, (
            f"{image}: Ray {ray.__version__}, Python 3.11 as CI tests it (pyproject.toml admits 3.11-3.12)"
        )


def test_cluster_setup_installs_the_synced_checkout():
    config = _cluster()
    mounts = {remote.rstrip("/"): (ROOT / local).resolve() for remote, local in config["file_mounts"].items()}
    for remote, local in mounts.items():
        assert local.exists() and ROOT in (local, *local.parents), f"file_mounts {remote}: {local} not in the repo"
    installs = []
    for command in config["setup_commands"] + config["head_setup_commands"] + config["worker_setup_commands"]:
        tokens = shlex.split(command)
        if "pip" in tokens and "install" in tokens:
            targets = [t for t in tokens[tokens.index("install") + 1 :] if not t.startswith("-")]
            installs += [t.rstrip("/") for t in targets]
    assert installs, "setup_commands pip-install the package"
    assert any(target in mounts and (mounts[target] / "pyproject.toml").is_file() for target in installs), (
        f"pip installs {installs}, but none of them is a synced copy of this repository ({sorted(mounts)})"
    )


def _mlflow_command(config: dict[str, Any]) -> str:
    commands = [c for c in config["head_setup_commands"] + config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(commands) == 1, "the head starts one MLflow tracking server"
    return commands[0]


def _option(tokens: list[str], name: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def test_head_runs_mlflow_on_a_private_address_only():
    command = _mlflow_command(_cluster())
    tokens = shlex.split(command)
    server = tokens[tokens.index("server") - 1 :]
    host = _option(server, "--host")
    assert host is not None and host not in WILDCARD_HOSTS, f"MLflow bound to {host!r}: reachable from anywhere"
    if host.startswith("$"):
        # A variable set in the same command from the node's own private address.
        variable = host.strip("${}")
        assignment = re.search(rf"\b{variable}=\$\((.+?)\)\s*(&&|;)", command)
        assert assignment, f"{variable} is set in the same command"
        sources = ("ray.util.get_node_ip_address", "hostname -I", "meta-data/local-ipv4")
        assert any(source in assignment.group(1) for source in sources), assignment.group(1)
    else:
        assert host == "127.0.0.1" or re.fullmatch(r"(10|192\.168|172\.(1[6-9]|2\d|3[01]))\.[\d.]+", host), host
    assert _option(server, "--port") == "5000"
    assert "$MLFLOW_BACKEND_STORE_URI" in command or "${MLFLOW_BACKEND_STORE_URI" in command
    artifacts = _option(server, "--artifacts-destination") or _option(server, "--default-artifact-root")
    assert artifacts and "MLFLOW_ARTIFACT_ROOT" in artifacts
    assert "nohup" in tokens and re.search(r"&\)?\s*$", command), "started in the background"


def test_security_group_opens_only_ssh_to_the_internet():
    rules = _cluster()["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        public = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        if public:
            assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), f"{rule} opens more than SSH"


def test_ray_start_commands_keep_the_dashboard_on_loopback():
    config = _cluster()
    every = " ".join(c for key, v in config.items() if key.endswith("_commands") for c in v)
    assert "dashboard-host=0.0.0.0" not in every.replace(" ", "=")
    (head,) = [shlex.split(c) for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert _option(head, "--dashboard-host") == "127.0.0.1"
    (worker,) = [shlex.split(c) for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert _option(worker, "--address") == "$RAY_HEAD_IP:6379"
    # The job driver on the head and anything on the workers find MLflow without being told.
    assert any("MLFLOW_TRACKING_URI=" in c for c in config["head_start_ray_commands"])
    assert any("MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in c for c in config["worker_start_ray_commands"])


# ---------------------------------------------------------------------------------------------
# k8s/rayjob.yaml
#
# No PyPI package was found that ships KubeRay's CRDs (the operator is Go, its Python client
# is not published there, codeflare-sdk has none and pins another Ray), and tests cannot
# download them. So the schema below is written here, smaller than the CRD's 1.4 MB. Its
# `required` lists and types are those of the RayJob CRD, ray.io/v1, in KubeRay v1.7.0
# (ray-operator/config/crd/bases/ray.io_rayjobs.yaml): rayClusterSpec requires headGroupSpec;
# headGroupSpec requires template; each workerGroupSpecs item requires groupName, minReplicas,
# maxReplicas and template; a pod spec requires containers, a container name, an env entry
# name, a volume name; rayStartParams values are strings; resource quantities are int-or-string
# in Kubernetes' quantity syntax. The property lists of the RayJob spec, the cluster spec and
# the group specs are the CRD's too: kubectl's strict field validation rejects anything else.
# Marked "controller": rules KubeRay's operator enforces when it reconciles (validation.go in
# the same release) rather than the API server: at least one container per group, a RayJob
# name that is a DNS-1035 label of at most 47 characters, non-negative replica bounds and TTL.
# Marked "project": this repository's choice (the job brings its own cluster and entrypoint).

QUANTITY = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
RESOURCES = {
    "type": "object",
    "properties": {
        kind: {"type": "object", "additionalProperties": {"type": ["string", "integer"], "pattern": QUANTITY}}
        for kind in ("limits", "requests")
    },
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image"],  # image: Kubernetes' pod validation, not the CRD
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "image": {"type": "string", "minLength": 1},
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "resources": RESOURCES,
    },
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},  # minItems: controller
                "serviceAccountName": {"type": "string"},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            },
        }
    },
}
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
REPLICAS = {"type": "integer", "minimum": 0}  # minimum: controller
HEAD_GROUP = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        **dict.fromkeys(["enableIngress"], {"type": "boolean"}),
        **dict.fromkeys(["headService", "ingressOptions", "labels", "resources"], {"type": "object"}),
        "serviceType": {"type": "string"},
        "rayStartParams": RAY_START_PARAMS,
        "template": POD_TEMPLATE,
    },
}
WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": REPLICAS,
        "minReplicas": REPLICAS,
        "maxReplicas": REPLICAS,
        **dict.fromkeys(["idleTimeoutSeconds", "numOfHosts", "priority"], {"type": "integer"}),
        **dict.fromkeys(["labels", "resources", "scaleStrategy"], {"type": "object"}),
        "suspend": {"type": "boolean"},
        "rayStartParams": RAY_START_PARAMS,
        "template": POD_TEMPLATE,
    },
}
RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        **dict.fromkeys(["enableInTreeAutoscaling", "suspend"], {"type": "boolean"}),
        "managedBy": {"type": "string"},
        **dict.fromkeys(
            [
                "authOptions",
                "autoscalerOptions",
                "gcsFaultToleranceOptions",
                "headServiceAnnotations",
                "historyServerOptions",
                "networkPolicy",
                "tlsOptions",
                "upgradeStrategy",
            ],
            {"type": "object"},
        ),
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            # controller: the RayCluster's name is the RayJob's plus a suffix.
            "properties": {"name": {"type": "string", "maxLength": 47, "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],  # project (the CRD leaves both optional)
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "rayClusterSpec": RAY_CLUSTER_SPEC,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},  # minimum: controller
                "backoffLimit": {"type": "integer", "minimum": 0},
                **dict.fromkeys(
                    ["activeDeadlineSeconds", "preRunningDeadlineSeconds"], {"type": "integer", "minimum": 1}
                ),
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                **dict.fromkeys(["runtimeEnvYAML", "jobId", "entrypointResources", "managedBy"], {"type": "string"}),
                **dict.fromkeys(["entrypointNumCpus", "entrypointNumGpus"], {"type": "number"}),
                **dict.fromkeys(["suspend"], {"type": "boolean"}),
                **dict.fromkeys(
                    ["clusterSelector", "deletionStrategy", "metadata", "submitterConfig", "submitterPodTemplate"],
                    {"type": "object"},
                ),
            },
        },
    },
}


def _groups(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])


def _gpus(group: dict[str, Any]) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


def test_rayjob_matches_the_kuberay_crd():
    job = _rayjob()
    jsonschema.validate(job, RAYJOB_SCHEMA)
    names = [g["groupName"] for g in _groups(job)]
    assert len(names) == len(set(names)), "group names are unique"
    for group in _groups(job):  # controller: replicas within [min, max]
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


@pytest.mark.parametrize(
    "break_it",
    [
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"),
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        lambda j: j["spec"].update(shutdownAfterJobFinish=True),
        lambda j: j["spec"].update(ttlSecondsAfterFinished="10m"),
        lambda j: j["metadata"].update(name="SimCLR_run"),
        lambda j: j.update(apiVersion="ray.io/v1alpha1"),
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"].update(containers=[]),
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ].update({"nvidia.com/gpu": "four"}),
    ],
    ids=[
        "no-group-name",
        "no-head-template",
        "int-start-param",
        "misspelt-field",
        "ttl-string",
        "bad-name",
        "old-api",
        "no-containers",
        "bad-quantity",
    ],
)
def test_rayjob_schema_rejects_a_broken_copy(break_it):
    broken = copy.deepcopy(_rayjob())
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYJOB_SCHEMA)


def test_rayjob_project_rules():
    _no_credentials(RAYJOB)
    job = _rayjob()
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert cluster["rayVersion"] == ray.__version__ == _ray_pin()
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "no training on the head"
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in _groups(job)]
    accounts = {pod["spec"].get("serviceAccountName") for pod in pods}
    assert len(accounts) == 1 and None not in accounts, "every pod runs under the IRSA service account"
    (account,) = accounts
    service_accounts = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d.get("kind") == "ServiceAccount"]
    for sa in service_accounts:
        if sa["metadata"]["name"] == account:
            assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    head_env = {
        e["name"]: e.get("value", "")
        for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0].get("env", [])
    }
    uri = head_env.get("MLFLOW_TRACKING_URI", "")
    assert re.fullmatch(r"http://[a-z0-9.-]+\.svc(\.cluster\.local)?:\d+/?", uri), (
        f"in-cluster MLflow Service, got {uri!r}"
    )
    gpu_groups = [g for g in _groups(job) if _gpus(g) > 0]
    assert gpu_groups, "a GPU worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        for container in group["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            gpu = resources.get("limits", {}).get("nvidia.com/gpu")
            # Kubernetes takes extended resources from limits; a request, if given, must equal it.
            assert resources.get("requests", {}).get("nvidia.com/gpu", gpu) == gpu
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert all(f"ray{ray.__version__}" in image and "py311" in image for image in images), images


def _entrypoint_pipeline(entrypoint: str) -> tuple[Path, list[str]]:
    tokens = shlex.split(entrypoint)
    assert tokens[:2] == ["ssl-ray", "pretrain"], entrypoint
    match = re.search(r"pipelines/[\w.-]+\.ya?ml$", tokens[2])
    assert match, f"{tokens[2]}: a pipeline of this repository"
    overrides = [t for t in tokens[3:] if "=" in t and not t.startswith("-")]
    return ROOT / match.group(0), overrides


def test_rayjob_runs_an_existing_cloud_pipeline_that_fits_its_gpus():
    job = _rayjob()
    path, overrides = _entrypoint_pipeline(job["spec"]["entrypoint"])
    assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    config = load_config(path, overrides)
    for location in (config.data.path, config.data.val_path, config.train.storage_path):
        assert location is None or location.startswith("s3://"), f"{location}: not reachable from the pods"
    assert sum(g.get("replicas", g["minReplicas"]) * _gpus(g) for g in _groups(job)) >= config.train.num_workers
    # The in-image path is where docs/cloud.md's Dockerfile copies the repository.
    in_image = shlex.split(job["spec"]["entrypoint"])[2].removesuffix(str(path.relative_to(ROOT)))
    doc = CLOUD_DOC.read_text()
    assert re.search(rf"^\s*COPY\b.*\s\.\s+{re.escape(in_image.rstrip('/'))}\s*$", doc, re.M), in_image
    built = re.findall(r"docker build -t (\S+)", doc)
    assert built and {
        c["image"] for c in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    } <= set(built)


# ---------------------------------------------------------------------------------------------
# The commands in docs/cloud.md and the README


COMMAND = re.compile(r"ssl-ray (pretrain|sweep) ([^\s`]+\.ya?ml)([^`]*)")
OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[\w.]+=\S*$")


def _commands(path: Path, cloud_only: bool) -> list[tuple[str, str, list[str], str | None]]:
    """(verb, pipeline, overrides, --space) of every `ssl-ray pretrain|sweep` command in a
    document; with ``cloud_only`` just the ones submitted to a cluster or reading a bucket."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continued shell lines
    found = []
    for line in text.splitlines():
        line = re.split(r"\s#\s", line)[0]
        if cloud_only and "ray job submit" not in line and "s3://" not in line:
            continue
        for verb, pipeline, rest in COMMAND.findall(line):
            tokens = rest.split()
            found.append((verb, pipeline, [t for t in tokens if OVERRIDE.match(t)], _option(tokens, "--space")))
    return found


def test_cloud_doc_commands_name_existing_pipelines_that_load(monkeypatch, tmp_path):
    # Fashion-MNIST pipelines check their local data folder: any existing folder will do here.
    monkeypatch.setenv("SSL_RAY_FASHION_MNIST", str(tmp_path))
    commands = _commands(CLOUD_DOC, cloud_only=False) + _commands(README, cloud_only=True)
    assert any(pipeline == str(CLOUD_PIPELINE.relative_to(ROOT)) for _, pipeline, _, _ in commands)
    for verb, pipeline, overrides, space in commands:
        path = ROOT / pipeline
        assert path.is_file(), f"a command runs {pipeline}, which does not exist"
        load_config(path, overrides)
        if verb == "sweep":
            assert space and (ROOT / space).is_file(), f"sweep of {pipeline}: space {space} missing"
            load_space(ROOT / space, load_raw(path, overrides))


def test_cloud_doc_ray_cli_commands_name_this_repositorys_files():
    doc = CLOUD_DOC.read_text()
    for match in re.finditer(r"\bray (up|down|dashboard|exec|attach|get-head-ip) (\S+\.yaml)", doc):
        assert (ROOT / match.group(2)).is_file(), match.group(0)
    for match in re.finditer(r"kubectl apply -f (\S+\.yaml)", doc):
        assert (ROOT / match.group(1)).is_file(), match.group(0)
    assert "--address http://127.0.0.1:8265" in doc, "jobs go through the `ray dashboard` tunnel"
    _no_credentials(CLOUD_DOC)
    _no_credentials(CLOUD_PIPELINE)
