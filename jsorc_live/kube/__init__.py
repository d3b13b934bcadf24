"""The kube backend: each remote action as a Deployment and a ClusterIP Service, scaled
through `/scale`, its pods' addresses read from the Service's EndpointSlices.

    settings.py   the META_CONFIG `kubernetes` object (pure)
    client.py     the official client from a kubeconfig or in-cluster; what failures mean
    cluster.py    every API call, one method each (rbac.py lists them with their verbs)
    manifests.py  names, labels, the Deployment and Service of an action (pure)
    reconcile.py  the writes that make the cluster what is wanted (pure)
    informer.py   list-then-watch caches of Deployments and EndpointSlices
    backend.py    KubeBackend: the router's replicas as pods (see its docstring)
"""

from jsorc_live.kube.backend import KubeBackend
from jsorc_live.kube.client import KubeError
from jsorc_live.kube.settings import KubeSettings, parse_kube_settings

__all__ = ["KubeBackend", "KubeError", "KubeSettings", "parse_kube_settings"]
