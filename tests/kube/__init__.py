"""A real Kubernetes control plane for weft's tests, with a simulated node.

`cluster.start_cluster` runs etcd + kube-apiserver (1.20, built once by
scripts/kube-binaries.sh) and optionally kube-controller-manager on loopback;
`kubelet.start_kubelet` adds a node whose pods do what the test's behaviour says, up to
running their commands as local processes. conftest files wrap these in fixtures; this package
holds no fixtures itself so that each test tree chooses its own scope.
"""

from tests.kube.cluster import KubeCluster, find_kube_binaries, missing_binaries_reason, require_kube, start_cluster
from tests.kube.kubelet import PodRun, SimulatedKubelet, start_kubelet

__all__ = [
    "KubeCluster",
    "PodRun",
    "SimulatedKubelet",
    "find_kube_binaries",
    "missing_binaries_reason",
    "require_kube",
    "start_cluster",
    "start_kubelet",
]
