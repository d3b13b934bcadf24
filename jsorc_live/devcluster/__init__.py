"""A Kubernetes dev cluster on one machine: an API server emulator (kmock), a controller
manager and a stand-in kubelet that runs every pod as real processes on its own loopback
address. The documented way to try the kube backend without a cluster::

    from jsorc_live.devcluster import DevCluster

    with DevCluster(namespace="jsorc") as cluster:
        config.load_kube_config(str(cluster.kubeconfig))   # kubernetes.client, or kubectl
        ...

or ``jsorc devcluster --kubeconfig FILE [--port P] [--namespace NS]`` from a shell.

Public API: :class:`DevCluster` (``url``, ``kubeconfig``, ``namespace``, ``faults``,
``metrics_url``, ``pods(namespace=None)``, ``wait_for_pods``, ``call``, ``start``/``stop``,
a context manager), :class:`PodInfo` / :class:`ContainerInfo` (what ``pods`` lists),
:class:`Faults` / :class:`Fault` (faults.py: injected API errors and stalls),
:class:`DevClusterError`. The modules: emulator.py (the API, on kmock), store.py (storage
semantics), resources.py, discovery.py, tables.py, patches.py, selectors.py (the API
server's rules), workloads.py and endpoints.py (the controllers), kubelet.py and pods.py (the
node), cadvisor.py (the metrics), cluster.py (the wiring), cli.py (``jsorc devcluster``).
Needs the ``devcluster`` extra: ``pip install -e '.[devcluster]'``.
"""

from jsorc_live.devcluster.cluster import CONTEXT, NODE_NAME, DevCluster, DevClusterError
from jsorc_live.devcluster.faults import Fault, Faults
from jsorc_live.devcluster.kubelet import ContainerInfo, PodInfo

__all__ = [
    "CONTEXT",
    "NODE_NAME",
    "ContainerInfo",
    "DevCluster",
    "DevClusterError",
    "Fault",
    "Faults",
    "PodInfo",
]
