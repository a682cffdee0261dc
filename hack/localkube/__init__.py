"""Modelship's local Kubernetes: real control-plane binaries built from Go modules, on loopback."""

from localkube.cluster import Cluster, ClusterState

__all__ = ["Cluster", "ClusterState"]
