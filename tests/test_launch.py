"""Launch files stay valid: shellcheck on every script, the KubeRay RayJob against the schema of
the fields it uses, the Dockerfile's COPY sources exist (issue 6, point 3)."""

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (Debian: apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    p = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_every_launch_script_is_checked():
    names = {str(p.relative_to(ROOT)) for p in SCRIPTS}
    assert {"launch/local.sh", "launch/slurm/train.sbatch", "launch/local/setup_docker.sh"} <= names


# The schema of the fields the manifests use, written out from (not downloaded with) the sources:
# - RayJob: KubeRay v1.4.2, docs/reference/api.md (RayJobSpec, RayClusterSpec, HeadGroupSpec,
#   WorkerGroupSpec: field names, types, JobSubmissionMode's values) and
#   ray-operator/config/crd/bases/ray.io_rayjobs.yaml (rayStartParams: a string -> string map);
# - the pod templates and the PersistentVolumeClaim: Kubernetes core/v1 (API v1.28, the version
#   that reference links): PodSpec, Container, Volume, Toleration, HostPathType, access modes.
# additionalProperties: false makes a misspelt or unknown field fail here instead of at apply.
STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": STR}
QUANTITY = {"anyOf": [INT, STR]}


def obj(props: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


def arr(items: dict) -> dict:
    return {"type": "array", "items": items}


RESOURCES = obj({"requests": {"type": "object", "additionalProperties": QUANTITY},
                 "limits": {"type": "object", "additionalProperties": QUANTITY}})
CONTAINER = obj({
    "name": STR, "image": STR, "command": arr(STR), "args": arr(STR),
    "env": arr(obj({"name": STR, "value": STR}, ("name",))),
    "resources": RESOURCES,
    "volumeMounts": arr(obj({"name": STR, "mountPath": STR, "readOnly": BOOL}, ("name", "mountPath"))),
}, ("name",))
VOLUME = obj({
    "name": STR,
    "persistentVolumeClaim": obj({"claimName": STR, "readOnly": BOOL}, ("claimName",)),
    "emptyDir": obj({"medium": STR, "sizeLimit": QUANTITY}),
    "hostPath": obj({"path": STR, "type": {"enum": ["", "DirectoryOrCreate", "Directory", "FileOrCreate",
                                                    "File", "Socket", "CharDevice", "BlockDevice"]}},
                    ("path",)),
}, ("name",))
POD_TEMPLATE = obj({"spec": obj({
    "containers": arr(CONTAINER), "initContainers": arr(CONTAINER), "volumes": arr(VOLUME),
    "nodeSelector": STR_MAP,
    "tolerations": arr(obj({"key": STR, "operator": {"enum": ["Exists", "Equal"]}, "value": STR,
                            "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}})),
}, ("containers",))})
RAYJOB_SCHEMA = obj({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": obj({"name": STR, "namespace": STR, "labels": STR_MAP}, ("name",)),
    "spec": obj({
        "entrypoint": STR,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": INT, "backoffLimit": INT,
        "activeDeadlineSeconds": INT, "runtimeEnvYAML": STR,
        "rayClusterSpec": obj({
            "rayVersion": STR,
            "headGroupSpec": obj({"rayStartParams": STR_MAP, "template": POD_TEMPLATE,
                                  "serviceType": STR}, ("template",)),
            "workerGroupSpecs": arr(obj({
                "groupName": STR, "replicas": INT, "minReplicas": INT, "maxReplicas": INT,
                "rayStartParams": STR_MAP, "template": POD_TEMPLATE,
            }, ("groupName", "template"))),
        }, ("headGroupSpec",)),
    }, ("entrypoint", "rayClusterSpec")),
}, ("apiVersion", "kind", "metadata", "spec"))
PVC_SCHEMA = obj({
    "apiVersion": {"const": "v1"}, "kind": {"const": "PersistentVolumeClaim"},
    "metadata": obj({"name": STR, "namespace": STR, "labels": STR_MAP}, ("name",)),
    "spec": obj({
        "accessModes": arr({"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                     "ReadWriteOncePod"]}),
        "resources": obj({"requests": obj({"storage": QUANTITY}, ("storage",))}, ("requests",)),
        "storageClassName": STR,
    }, ("accessModes", "resources")),
}, ("apiVersion", "kind", "metadata", "spec"))


def manifest() -> dict:
    return yaml.safe_load((LAUNCH / "k8s" / "rayjob.yaml").read_text())


def test_rayjob_validates_against_the_fields_it_uses():
    jsonschema.validate(manifest(), RAYJOB_SCHEMA)


def test_the_schema_catches_a_misspelt_field():
    bad = manifest()
    bad["spec"]["shutdownAfterJobFinished"] = bad["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinished"):
        jsonschema.validate(bad, RAYJOB_SCHEMA)


def test_the_shared_volume_is_read_write_many():
    pvc = yaml.safe_load((LAUNCH / "k8s" / "pvc.yaml").read_text())
    jsonschema.validate(pvc, PVC_SCHEMA)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes write run_dir
    claims = {v["persistentVolumeClaim"]["claimName"]
              for g in [manifest()["spec"]["rayClusterSpec"]["headGroupSpec"],
                        *manifest()["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for v in g["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {pvc["metadata"]["name"]}


def test_only_the_sandbox_pods_reach_a_docker_engine():
    """The head and the GPU pods mount no Docker socket (the scorer actors run on the sandbox
    nodes); the sandbox group advertises its slots as the `sandbox` resource and no CPUs."""
    spec = manifest()["spec"]["rayClusterSpec"]
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}

    def sockets(group):
        vols = {v["name"] for v in group["template"]["spec"].get("volumes", []) if "hostPath" in v}
        pod = group["template"]["spec"]
        return {m["name"] for c in [*pod["containers"], *pod.get("initContainers", [])]
                for m in c.get("volumeMounts", []) if m["name"] in vols}

    assert sockets(groups["head"]) == set() and sockets(groups["gpu"]) == set()
    assert sockets(groups["sandbox"]) == {"docker-sock"}
    params = groups["sandbox"]["rayStartParams"]
    assert params["num-cpus"] == "0" and params["num-gpus"] == "0"
    # KubeRay's format for custom resources: a JSON object inside a quoted string
    slots = json.loads(json.loads(params["resources"]))
    assert set(slots) == {"sandbox"} and slots["sandbox"] >= 1


def test_rayjob_matches_the_m1_80k_cluster():
    from hydra import compose, initialize_config_dir

    import cispo.config  # noqa: F401  (registers the config schema with Hydra)

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["+exp=m1_80k"])
    spec = manifest()["spec"]
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    gpus = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu["replicas"] == cfg.cluster.nodes and int(gpus) == cfg.cluster.gpus_per_node
    assert groups["sandbox"]["replicas"] == cfg.cluster.cpu_nodes
    mounts = groups["sandbox"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/var/run/docker.sock" for m in mounts)
    assert "+exp=m1_80k" in spec["entrypoint"] and "ray.address=auto" in spec["entrypoint"]
    assert cfg.sandbox.placement == "actors" and cfg.sandbox.resource == "sandbox"
    slots = json.loads(json.loads(groups["sandbox"]["rayStartParams"]["resources"]))["sandbox"]
    assert slots * cfg.sandbox.cpus <= cfg.cluster.cpus_per_cpu_node


def test_dockerfile_copies_what_exists():
    text = (LAUNCH / "docker" / "Dockerfile").read_text()
    sources = [w for line in text.splitlines() if line.startswith("COPY ")
               for w in line.split()[1:-1]]
    assert sources and all((ROOT / s).exists() for s in sources), sources
