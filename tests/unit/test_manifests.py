"""The Kubernetes manifests of the CSI driver (conf/kubernetes/csi/), checked
offline.

- Every object of a built-in kind is validated with `kubernetes-validate`
  (the published OpenAPI schemas, strict: unknown fields are errors) for the
  oldest and newest Kubernetes versions we claim.
- `snapshot.storage.k8s.io` objects are CRDs, absent from those schemas; they
  are checked against a small JSON schema written here from the v1 CRD's
  fields (required fields, enums, no unknown fields). That catches typos and
  wrong types, not everything the API server's CRD validation would.
- Cross-references that no schema sees: driver names, service accounts,
  (Cluster)Role bindings, socket paths shared between containers, the driver's
  command line against its real argument parser, volumes and mounts.
"""

import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "conf" / "kubernetes" / "csi"
DRIVER = "podplumb.csi.io"
NAMESPACE = "podplumb-system"
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
SOCKET_DIR = "/csi"
SOCKET = "/csi/csi.sock"
STATE_DIR = "/var/lib/podplumb/csi"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}, "labels": _STRING_MAP,
                   "annotations": _STRING_MAP},
    "additionalProperties": False,
}


def _class_schema(api_version, kind):
    """A (group) snapshot class: driver, deletion policy, parameters."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "driver", "deletionPolicy"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "driver": {"type": "string", "minLength": 1},
            "deletionPolicy": {"enum": ["Delete", "Retain"]},
            "parameters": _STRING_MAP,
        },
        "additionalProperties": False,
    }


# Written from the snapshot.storage.k8s.io/v1 CRDs (external-snapshotter).
CRD_SCHEMAS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"):
        _class_schema("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    # groupsnapshot.storage.k8s.io/v1beta1 (external-snapshotter v8.2)
    ("groupsnapshot.storage.k8s.io/v1beta1", "VolumeGroupSnapshotClass"):
        _class_schema("groupsnapshot.storage.k8s.io/v1beta1", "VolumeGroupSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "snapshot.storage.k8s.io/v1"},
            "kind": {"const": "VolumeSnapshot"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["source"],
                "properties": {
                    "volumeSnapshotClassName": {"type": "string"},
                    "source": {
                        "type": "object",
                        "minProperties": 1, "maxProperties": 1,   # exactly one source
                        "properties": {"persistentVolumeClaimName": {"type": "string"},
                                       "volumeSnapshotContentName": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}


def load_all():
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = load_all()


def ident(item):
    fname, doc = item
    return f"{fname}:{doc['kind']}/{doc['metadata']['name']}"


def objects(kind):
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def one(kind, name=None):
    found = [d for d in objects(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def daemonset():
    return one("DaemonSet", "podplumb-csi-node")


def containers():
    return {c["name"]: c for c in daemonset()["spec"]["template"]["spec"]["containers"]}


def flags(container):
    """--flag=value and --flag value arguments of a container as a dict."""
    argv = list(container.get("command", [])) + list(container.get("args", []))
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            key = arg.lstrip("-")
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                value = argv[i + 1]
                i += 1
            else:
                value = True
            out[key] = value
        i += 1
    return out


def env(container):
    return {e["name"]: e for e in container.get("env", [])}


# ------------------------------------------------------------------ schemas
def test_manifests_exist():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds >= {"Namespace", "CSIDriver", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "Role", "RoleBinding", "DaemonSet", "StorageClass", "VolumeSnapshotClass"}


def _is_crd(doc):
    return (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", [d for d in DOCS if not _is_crd(d[1])], ids=ident)
def test_builtin_kinds_valid(item, version):
    _, doc = item
    kubernetes_validate.validate(doc, version, strict=True)


def test_validator_is_strict():
    """kubernetes-validate really rejects a misspelt field and a wrong type."""
    import copy
    ds = copy.deepcopy(daemonset())
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)
    driver = copy.deepcopy(one("CSIDriver"))
    driver["spec"]["attachRequired"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(driver, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("item", [d for d in DOCS if _is_crd(d[1])], ids=ident)
def test_snapshot_crd_objects_valid(item):
    _, doc = item
    schema = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, schema)


def test_crd_schema_rejects_mistakes():
    """The hand-written CRD schema is not a rubber stamp."""
    good = one("VolumeSnapshotClass")
    schema = CRD_SCHEMAS[("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")]
    for bad in [{**good, "deletionPolicy": "Keep"}, {**good, "drvier": DRIVER},
                {k: v for k, v in good.items() if k != "driver"}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_namespaced_objects_in_our_namespace():
    cluster_scoped = {"Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding",
                      "StorageClass", "VolumeSnapshotClass", "VolumeGroupSnapshotClass"}
    for fname, doc in DOCS:
        if fname.startswith("example-") or doc["kind"] in cluster_scoped:
            continue
        assert doc["metadata"].get("namespace") == NAMESPACE, ident((fname, doc))
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


# ------------------------------------------------------------------- driver
def test_csidriver_object():
    spec = one("CSIDriver", DRIVER)["spec"]
    assert spec["attachRequired"] is False
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    # without pod info kubelet does not mark inline volumes as ephemeral
    assert spec["podInfoOnMount"] is True
    # capacity tracking is on only if the provisioner publishes capacity
    assert spec["storageCapacity"] == ("enable-capacity" in flags(containers()["csi-provisioner"]))


def test_driver_name_everywhere():
    for sc in objects("StorageClass"):
        assert sc["provisioner"] == DRIVER
    for vsc in objects("VolumeSnapshotClass"):
        assert vsc["driver"] == DRIVER
    registrar = flags(containers()["node-driver-registrar"])
    assert registrar["kubelet-registration-path"] == f"/var/lib/kubelet/plugins/{DRIVER}/csi.sock"


def test_driver_command_line_matches_real_parser():
    driver = containers()["podplumb-csi"]
    command = driver["command"]
    assert command[:2] == ["podplumb", "csi"]
    got = flags(driver)
    assert got["endpoint"] == f"unix://{SOCKET}"
    assert got["node-id"] == "$(NODE_NAME)"
    assert got["state-dir"] == STATE_DIR
    assert env(driver)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # every flag the manifest passes is one the driver's parser accepts
    help_text = subprocess.run([sys.executable, "-m", "csi.server", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"--([a-z][a-z0-9-]*)", help_text))
    assert set(got) <= known, f"flags unknown to csi.server: {set(got) - known}"


def test_driver_container_privileges_and_mounts():
    driver = containers()["podplumb-csi"]
    assert driver["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    for path in ["/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", STATE_DIR]:
        assert mounts[path].get("mountPropagation") == "Bidirectional", path
    assert "/dev" in mounts
    volumes = {v["name"]: v for v in daemonset()["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[STATE_DIR]["name"]]["hostPath"]["path"] == STATE_DIR
    assert volumes[mounts["/dev"]["name"]]["hostPath"]["path"] == "/dev"
    assert volumes[mounts["/var/lib/kubelet/pods"]["name"]]["hostPath"]["path"] == \
        "/var/lib/kubelet/pods"


def test_bidirectional_only_when_privileged():
    for name, c in containers().items():
        if any(m.get("mountPropagation") == "Bidirectional" for m in c.get("volumeMounts", [])):
            assert c.get("securityContext", {}).get("privileged") is True, name


def test_socket_shared_by_all_containers():
    pod = daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    socket_volume = None
    for name, c in containers().items():
        f = flags(c)
        address = f.get("csi-address") or f.get("endpoint")
        assert address in (SOCKET, f"unix://{SOCKET}"), f"{name} talks to {address}"
        mount = [m for m in c["volumeMounts"] if m["mountPath"] == SOCKET_DIR]
        assert len(mount) == 1, f"{name} does not mount the socket dir at {SOCKET_DIR}"
        assert socket_volume in (None, mount[0]["name"]), f"{name} mounts another socket volume"
        socket_volume = mount[0]["name"]
    host_dir = volumes[socket_volume]["hostPath"]["path"]
    registration = flags(containers()["node-driver-registrar"])["kubelet-registration-path"]
    assert registration == f"{host_dir}/csi.sock", "kubelet would look for the socket elsewhere"
    registrar_mounts = {m["mountPath"]: m["name"] for m in containers()["node-driver-registrar"]["volumeMounts"]}
    assert volumes[registrar_mounts["/registration"]]["hostPath"]["path"] == \
        "/var/lib/kubelet/plugins_registry"


def test_every_mount_has_a_volume():
    pod = daemonset()["spec"]["template"]["spec"]
    names = {v["name"] for v in pod["volumes"]}
    used = set()
    for name, c in containers().items():
        for m in c.get("volumeMounts", []):
            assert m["name"] in names, f"{name} mounts unknown volume {m['name']}"
            used.add(m["name"])
    assert used == names, f"volumes never mounted: {names - used}"


def test_liveness_probe_wiring():
    driver = containers()["podplumb-csi"]
    probe = driver["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert probe["path"] == "/healthz"
    port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
    assert int(flags(containers()["liveness-probe"])["health-port"]) == port


def test_sidecar_images_pinned():
    for name, c in containers().items():
        image = c["image"]
        if name == "podplumb-csi":
            continue
        assert image.startswith("registry.k8s.io/sig-storage/"), image
        assert re.search(r":v\d+\.\d+\.\d+$", image), f"{image} is not pinned to a release"
    expected = {"node-driver-registrar": "csi-node-driver-registrar", "liveness-probe": "livenessprobe",
                "csi-provisioner": "csi-provisioner", "csi-snapshotter": "csi-snapshotter",
                "csi-resizer": "csi-resizer"}
    for name, image in expected.items():
        assert containers()[name]["image"].split("/")[-1].split(":")[0] == image


def test_node_local_controller_sidecars():
    """Per-node modes: each provisioner/snapshotter handles its own node only."""
    prov = containers()["csi-provisioner"]
    f = flags(prov)
    assert f["node-deployment"] == "true"
    assert {"NODE_NAME", "NAMESPACE", "POD_NAME"} <= set(env(prov))
    assert env(prov)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    snap = containers()["csi-snapshotter"]
    assert flags(snap)["node-deployment"] == "true"
    assert env(snap)["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # one resizer for the cluster, in our namespace (README: no per-node mode yet)
    resizer = flags(containers()["csi-resizer"])
    assert resizer.get("leader-election") is True
    assert resizer["leader-election-namespace"] == NAMESPACE
    # the attacher is not deployed: nothing to attach
    assert "csi-attacher" not in containers()


# --------------------------------------------------------------------- RBAC
def test_service_account_exists():
    sa = daemonset()["spec"]["template"]["spec"]["serviceAccountName"]
    assert one("ServiceAccount", sa)["metadata"]["namespace"] == NAMESPACE


def test_bindings_point_at_existing_objects():
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in objects("ServiceAccount")}
    cluster_roles = {d["metadata"]["name"] for d in objects("ClusterRole")}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in objects("Role")}
    bound_roles = set()
    for binding in objects("ClusterRoleBinding") + objects("RoleBinding"):
        ref = binding["roleRef"]
        if ref["kind"] == "ClusterRole":
            assert ref["name"] in cluster_roles, ref
        else:
            assert binding["kind"] == "RoleBinding"
            assert (binding["metadata"]["namespace"], ref["name"]) in roles, ref
            bound_roles.add(ref["name"])
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert (subject["namespace"], subject["name"]) in accounts, subject
        if ref["kind"] == "ClusterRole":
            bound_roles.add(ref["name"])
    unbound = (cluster_roles | {n for _, n in roles}) - bound_roles
    assert not unbound, f"roles bound to nobody: {unbound}"


def _allowed(group, resource, verb):
    """Does any ClusterRole or Role of ours grant verb on group/resource?"""
    for role in objects("ClusterRole") + objects("Role"):
        for rule in role["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
                return True
    return False


@pytest.mark.parametrize("group,resource,verb", [
    ("", "persistentvolumes", "create"), ("", "persistentvolumes", "delete"),
    ("", "persistentvolumeclaims", "watch"), ("storage.k8s.io", "storageclasses", "list"),
    ("storage.k8s.io", "csinodes", "get"), ("", "nodes", "get"), ("", "events", "create"),
    ("storage.k8s.io", "csistoragecapacities", "create"), ("", "pods", "get"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents", "update"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "update"),
    ("snapshot.storage.k8s.io", "volumesnapshotclasses", "watch"),
    ("", "persistentvolumeclaims/status", "patch"), ("", "persistentvolumes", "patch"),
    ("coordination.k8s.io", "leases", "update"),
])
def test_sidecars_have_the_permissions_they_use(group, resource, verb):
    assert _allowed(group, resource, verb)


# ------------------------------------------------------ classes and examples
def test_storage_classes_per_kind():
    classes = {sc["metadata"]["name"]: sc for sc in objects("StorageClass")}
    assert set(classes) == {"podplumb-bind", "podplumb-ext4", "podplumb-xfs", "podplumb-block",
                            "podplumb-gluster"}
    assert classes["podplumb-bind"]["parameters"]["kind"] == "bind"
    assert classes["podplumb-ext4"]["parameters"] == {"kind": "loop", "csi.storage.k8s.io/fstype": "ext4"}
    assert classes["podplumb-xfs"]["parameters"] == {"kind": "loop", "csi.storage.k8s.io/fstype": "xfs"}
    assert classes["podplumb-block"]["parameters"]["kind"] == "loop"
    assert set(classes["podplumb-gluster"]["parameters"]) == {"kind", "glusterServer",
                                                              "glusterVolume"}
    for sc in classes.values():
        # node-deployment provisioners only act on PVCs with a selected node
        assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
        assert sc["allowVolumeExpansion"] is True
        # the driver refuses any other parameter (docs/csi-contract.md)
        known = {"kind"} | ({"glusterServer", "glusterVolume"}
                            if sc["parameters"]["kind"] == "gluster" else set())
        for key in sc["parameters"]:
            assert key in known or key.startswith("csi.storage.k8s.io/"), key


def test_group_snapshots_enabled():
    assert "--feature-gates=CSIVolumeGroupSnapshot=true" in containers()["csi-snapshotter"]["args"]
    assert one("VolumeGroupSnapshotClass")["driver"] == DRIVER
    assert _allowed("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "update")


def test_inline_example_uses_the_driver_and_its_kinds():
    pod = one("Pod", "inline-demo")
    inline = [v["csi"] for v in pod["spec"]["volumes"] if "csi" in v]
    assert inline and all(v["driver"] == DRIVER for v in inline)
    assert {v["volumeAttributes"]["kind"] for v in inline} <= {"bind", "loop", "tmpfs"}


def test_examples_reference_existing_classes():
    classes = {sc["metadata"]["name"] for sc in objects("StorageClass")}
    snap_classes = {c["metadata"]["name"] for c in objects("VolumeSnapshotClass")}
    pvcs = {p["metadata"]["name"]: p for p in objects("PersistentVolumeClaim")}
    for pvc in pvcs.values():
        assert pvc["spec"]["storageClassName"] in classes
        assert set(pvc["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}
    assert any(p["spec"].get("volumeMode") == "Block" for p in pvcs.values()), "no block example"
    for snap in objects("VolumeSnapshot"):
        assert snap["spec"]["volumeSnapshotClassName"] in snap_classes
        assert snap["spec"]["source"]["persistentVolumeClaimName"] in pvcs
    for pod in objects("Pod"):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert set(claims.values()) <= set(pvcs)
        for c in pod["spec"]["containers"]:
            for dev in c.get("volumeDevices", []):
                assert pvcs[claims[dev["name"]]]["spec"].get("volumeMode") == "Block"
            for m in c.get("volumeMounts", []):
                if m["name"] in claims:
                    assert pvcs[claims[m["name"]]]["spec"].get("volumeMode", "Filesystem") == "Filesystem"


def test_driver_metrics_port_is_exposed():
    driver = containers()["podplumb-csi"]
    port = int(flags(driver)["metrics-address"].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in driver["ports"]}["metrics"] == port
    assert daemonset()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert flags(driver)["log-format"] == "json"
