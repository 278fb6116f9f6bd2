"""A real 2-node Ray cluster on 127.0.0.1 for the tests, made with Ray's own node API
(``ray.cluster_utils.Cluster``: a head and a second raylet, each its own processes).

    python tests/ray_cluster.py HEAD_CPUS WORKER_CPUS

prints the head's GCS address (``127.0.0.1:PORT``) once both nodes are up, then runs until
its stdin closes. ``RAY_AUTH_TOKEN`` and ``RAY_TMPDIR`` come from the caller's environment.
"""

from __future__ import annotations

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every process on the loopback


def main(head_cpus: int, worker_cpus: int) -> None:
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, **common})
    try:
        cluster.add_node(num_cpus=worker_cpus, **common)
        cluster.wait_for_nodes()
        print(cluster.address, flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
