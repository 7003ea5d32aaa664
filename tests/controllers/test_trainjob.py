"""`graft render --target trainjob` proven by the real Kubeflow Trainer v2.3 controller manager and
the JobSet controller: Graft's ClusterTrainingRuntime and a rendered TrainJob pass the Trainer's
own webhooks, the Trainer turns them into a JobSet (its torch plugin's env, Graft's runtime patch
merged in), the JobSet controller makes the Job, kube-controller-manager's job controller the
pods, and the node stand-in (tests/node_standin.py, a test harness, not a kubelet) runs them: a
2-node gloo DDP fine-tune until the Trainer itself marks the TrainJob Complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane.controllers import bound_claim, watch_until  # noqa: E402
from test_pytorchjob import core, env_of, render, shared_job  # noqa: E402, F401 (core: a fixture)

pytestmark = pytest.mark.controlplane

JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"  # the job controller's, per pod
TORCH_PORT = 29500  # the Trainer's torch plugin: every node's container port, and the master's


@pytest.fixture
def graft_runtime(control_plane, namespace) -> str:
    """Graft's ClusterTrainingRuntime as `graft.render.render_training_runtime` makes it, under a
    name of this test's own (it is cluster-scoped, and the chart installs the usual name)."""
    from graft.manifests_gen import trainer_image
    from graft.render import render_training_runtime, to_yaml

    name = f"graft-{namespace}"
    control_plane.kubectl("apply", "-f", "-", input=to_yaml([render_training_runtime(trainer_image(), name)]))
    yield name
    control_plane.kubectl("delete", "clustertrainingruntime", name, "--ignore-not-found", check=False)


def get(control_plane, namespace: str, kind: str, name: str) -> dict:
    return json.loads(control_plane.kubectl("get", "-n", namespace, f"{kind}/{name}", "-o", "json").stdout)


@pytest.mark.distributed
@pytest.mark.slow
def test_rendered_trainjob_becomes_a_jobset_whose_pods_train_to_complete(
        trainer, node, control_plane, core, namespace, graft_runtime, tmp_path):
    name = "rendered"
    document = shared_job(name)
    document["spec"]["kubernetes"]["trainingRuntime"] = graft_runtime
    document["spec"]["resources"].update(cpu="500m", memory="1Gi")
    bound_claim(control_plane, namespace, "shared")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=render(tmp_path, document, "trainjob"))

    control_plane.kubectl("wait", "-n", namespace, f"jobset/{name}", "--for=create", "--timeout=60s")
    jobset = get(control_plane, namespace, "jobset", name)
    assert [(o["kind"], o["name"]) for o in jobset["metadata"]["ownerReferences"]] == [("TrainJob", name)]
    # One replicated job "node" whose Job runs one pod per node (spec.resources.nodes).
    [node_job] = jobset["spec"]["replicatedJobs"]
    assert node_job["name"] == "node" and node_job["replicas"] == 1
    job_spec = node_job["template"]["spec"]
    assert (job_spec["parallelism"], job_spec["completions"], job_spec["completionMode"]) == (2, 2, "Indexed")
    # The JobSet webhook's default, which gives each pod the DNS name the master address uses.
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True

    pod_spec = job_spec["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["name"] == "node"
    assert container["command"] == ["torchrun", "--module", "graft_trainer", "/etc/graft/spec.yaml"]
    # What torchrun will see: the torch plugin's static rendezvous at node 0 of the JobSet.
    env = {item["name"]: item for item in container["env"]}
    assert env["PET_NNODES"]["value"] == "2" and env["PET_NPROC_PER_NODE"]["value"] == "1"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{INDEX_ANNOTATION}']"
    assert env["PET_MASTER_ADDR"]["value"] == f"{name}-node-0-0.{name}"
    assert env["PET_MASTER_PORT"]["value"] == str(TORCH_PORT)
    assert env["HOME"]["value"] == "/tmp" and env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == "30"
    assert {"containerPort": TORCH_PORT, "protocol": "TCP"}.items() <= container["ports"][0].items()
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "1Gi"},
                                      "requests": {"cpu": "500m", "memory": "1Gi"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["workingDir"] == "/workspace"
    # The runtime's volumes and Graft's runtime patch (spec ConfigMap, the shared claim), merged.
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["graft-spec"]["configMap"]["name"] == f"{name}-spec"
    assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "shared"
    assert "emptyDir" in volumes["graft-tmp"] and "emptyDir" in volumes["graft-workspace"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "graft-tmp", "/workspace": "graft-workspace", "/etc/graft": "graft-spec",
                      "/shared": "shared"}
    assert pod_spec["terminationGracePeriodSeconds"] == 35  # checkpoint grace 25 s + the margin
    assert pod_spec["securityContext"]["runAsUser"] == 1000 and pod_spec["restartPolicy"] == "OnFailure"
    assert job_spec["template"]["metadata"]["labels"]["graft.dev/job"] == name

    # The JobSet controller made the Job and its headless Service; the job controller the pods.
    pods = watch_until(core.list_namespaced_pod, lambda items: len(items) == 2 and items, 120,
                       namespace=namespace, label_selector=f"{JOBSET_LABEL}={name}")
    by_index = {p["metadata"]["annotations"][INDEX_ANNOTATION]: p for p in pods}
    assert set(by_index) == {"0", "1"}
    for index, pod in by_index.items():
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"{name}-node-0-{index}", name)
        assert env_of(pod)["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
    service = core.read_namespaced_service(name, namespace)
    assert service.spec.cluster_ip == "None"

    # The Trainer, not the test, decides the job is done: JobSet Completed, so TrainJob Complete.
    control_plane.kubectl("wait", "-n", namespace, f"trainjob/{name}", "--for=condition=Complete",
                          "--timeout=300s")
    assert any(c["type"] == "Completed" and c["status"] == "True"
               for c in get(control_plane, namespace, "jobset", name)["status"]["conditions"])
    done = watch_until(core.list_namespaced_pod,
                       lambda items: len(items) == 2 and all(p["status"]["phase"] == "Succeeded" for p in items)
                       and items, 60, namespace=namespace, label_selector=f"{JOBSET_LABEL}={name}")
    rank0 = next(p for p in done if p["metadata"]["annotations"][INDEX_ANNOTATION] == "0")
    assert "val_accuracy" in rank0["status"]["containerStatuses"][0]["state"]["terminated"]["message"]


def test_the_trainers_webhook_refuses_the_torch_env_graft_refuses_to_render(
        trainer, control_plane, namespace, graft_runtime, tmp_path):
    """Why `graft render --target trainjob` refuses kubernetes.env naming a PET_* variable: the
    same TrainJob with one added by hand is denied at admission by the Trainer's own webhook."""
    document = shared_job("reserved")
    document["spec"]["kubernetes"]["trainingRuntime"] = graft_runtime
    trainjob = next(o for o in yaml.safe_load_all(render(tmp_path, document, "trainjob")) if o["kind"] == "TrainJob")
    trainjob["spec"]["trainer"]["env"].append({"name": "PET_MASTER_PORT", "value": "1234"})
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(trainjob), check=False)
    assert refused.returncode != 0
    assert 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied' in refused.stderr
    assert "must not have reserved envs" in refused.stderr and "PET_MASTER_PORT" in refused.stderr
