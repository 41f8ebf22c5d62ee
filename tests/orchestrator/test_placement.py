"""Placement groups put roles where the config says, on a two-node
``ray.cluster_utils.Cluster`` (two raylets on this machine, 1 CPU each).

The cluster needs a Ray of its own, so the check runs in a subprocess and
prints what it saw as JSON; the session's local Ray is left alone. The actors
are featherweight stand-ins (``Where``) spawned through the real
``Placement.spawn``, so the test measures placement, not model loading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hbat.orchestrator.config import ResourcesConfig
from hbat.orchestrator.placement import plan_bundles

SCRIPT = r"""
import json
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from hbat.orchestrator.config import ResourcesConfig
from hbat.orchestrator.placement import Placement


class Where:
    def __init__(self, role):
        self.role = role

    def node(self):
        return ray.get_runtime_context().get_node_id()


CASES = {
    # policy and rollout colocated (one bundle), reference in its own; STRICT_SPREAD
    "colocate_spread": (dict(colocate=[["policy", "rollout"]], strategy="STRICT_SPREAD"),
                        ["policy", "rollout", "reference"]),
    # PACK would put both on one node, but each bundle needs a whole CPU and a node has one
    "pack_full_nodes": (dict(policy={"num_cpus": 1}, reference={"num_cpus": 1}, strategy="PACK"),
                        ["policy", "reference"]),
    # PACK with room: everything on one node
    "pack_fits": (dict(strategy="PACK"), ["policy", "reference", "rollout"]),
    # two rollout replicas, STRICT_SPREAD: one per node
    "replicas_spread": (dict(rollout={"num_cpus": 0.2, "replicas": 2}, strategy="STRICT_SPREAD"), ["rollout"]),
}

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
out = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]), "cases": {}}
for name, (res, roles) in CASES.items():
    placement = Placement(ResourcesConfig(**res), roles, timeout_s=60)
    groups = {r: placement.spawn(r, Where, r) for r in roles}
    nodes = {r: ray.get([a.node.remote() for a in g.actors]) for r, g in groups.items()}
    table = placement_group_table(placement.pg)
    bundle_nodes = [table["bundles_to_node_id"][i] for i in range(len(placement.bundles))]
    out["cases"][name] = {"nodes": nodes, "where": placement.where, "bundle_nodes": bundle_nodes,
                          "bundles": placement.bundles}
    placement.shutdown()
ray.shutdown()
cluster.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_plan_bundles_colocation():
    """The bundle plan itself: colocated roles share (and sum into) one bundle."""
    res = ResourcesConfig(colocate=[["policy", "rollout"]], rollout={"num_cpus": 0.3, "replicas": 2})
    bundles, where = plan_bundles(res, ["policy", "reference", "rollout"])
    assert bundles == [{"CPU": 0.4 + 0.3}, {"CPU": 0.3}, {"CPU": 0.2}]
    assert where == {"policy": [0], "rollout": [0, 1], "reference": [2]}
    # roles not in this run are dropped from colocation groups
    bundles, where = plan_bundles(res, ["policy", "reference"])
    assert where == {"policy": [0], "reference": [1]} and bundles == [{"CPU": 0.4}, {"CPU": 0.2}]


def test_roles_land_on_configured_nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert len(out["nodes"]) == 2
    cases = out["cases"]

    def node(case, role, i=0):
        return cases[case]["nodes"][role][i]

    for name, case in cases.items():  # every actor sits on the node of its own bundle
        for role, idx in case["where"].items():
            assert case["nodes"][role] == [case["bundle_nodes"][b] for b in idx], name

    c = "colocate_spread"
    assert node(c, "policy") == node(c, "rollout")
    assert node(c, "reference") != node(c, "policy")
    assert set(cases[c]["bundle_nodes"]) == set(out["nodes"])

    c = "pack_full_nodes"
    assert node(c, "policy") != node(c, "reference")

    c = "pack_fits"
    assert node(c, "policy") == node(c, "reference") == node(c, "rollout")

    c = "replicas_spread"
    assert len(set(cases[c]["nodes"]["rollout"])) == 2
