"""Where each role runs: one Ray placement group whose bundles are the
colocation groups of the config (docs/architecture.md §5).

Roles listed together in ``resources.colocate`` share one bundle per replica
(its resources are the sum of theirs), so they land on the same node and, on
GPU, can share a device; every other role gets bundles of its own. The
placement strategy (PACK / SPREAD / STRICT_*) then decides how bundles map to
nodes. ``RoleGroup`` is the small fan-out wrapper the driver talks to.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ROLES = ("policy", "reference", "reward", "critic", "rollout")


@dataclass
class RoleGroup:
    """Replicas of one role. ``call`` fans the same call out; ``scatter`` splits a list."""

    name: str
    actors: list

    def call(self, method: str, *args, **kwargs) -> list:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def first(self, method: str, *args, **kwargs):
        return getattr(self.actors[0], method).remote(*args, **kwargs)

    def scatter(self, method: str, items: list, *args, **kwargs) -> list:
        """Split ``items`` into contiguous near-equal chunks, one per replica."""
        n = len(self.actors)
        bounds = [round(i * len(items) / n) for i in range(n + 1)]
        return [
            getattr(a, method).remote(items[bounds[i] : bounds[i + 1]], *args, **kwargs)
            for i, a in enumerate(self.actors)
            if bounds[i + 1] > bounds[i]
        ]


def plan_bundles(resources, roles: list[str]) -> tuple[list[dict], dict[str, list[int]]]:
    """Bundles and, per role, the bundle index of each replica."""
    groups: list[list[str]] = [[r for r in g if r in roles] for g in resources.colocate]
    groups = [g for g in groups if g]
    grouped = {r for g in groups for r in g}
    groups += [[r] for r in roles if r not in grouped]
    bundles: list[dict] = []
    where: dict[str, list[int]] = {}
    for group in groups:
        replicas = max(getattr(resources, r).replicas for r in group)
        for i in range(replicas):
            bundle: dict[str, float] = {}
            for r in group:
                spec = getattr(resources, r)
                if i < spec.replicas:
                    bundle["CPU"] = bundle.get("CPU", 0.0) + spec.num_cpus
                    if spec.num_gpus:
                        bundle["GPU"] = bundle.get("GPU", 0.0) + spec.num_gpus
                    where.setdefault(r, []).append(len(bundles))
            bundles.append({k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.01})
    return bundles, where


class Placement:
    """Creates the placement group and the role actors inside it."""

    def __init__(self, resources, roles: list[str], timeout_s: float = 120):
        self.resources = resources
        self.bundles, self.where = plan_bundles(resources, roles)
        self.pg = placement_group(self.bundles, strategy=resources.strategy, name="hbat")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(self.pg)
            raise RuntimeError(
                f"placement group {self.bundles} ({resources.strategy}) could not be scheduled in "
                f"{timeout_s:.0f}s; cluster has {ray.cluster_resources()}: lower resources.*.num_cpus/num_gpus"
            )

    def spawn(self, role: str, worker_cls, *args, **kwargs) -> RoleGroup:
        spec = getattr(self.resources, role)
        remote_cls = ray.remote(worker_cls)
        actors = []
        for i, bundle in enumerate(self.where[role]):
            actors.append(
                remote_cls.options(
                    num_cpus=spec.num_cpus,
                    num_gpus=spec.num_gpus,
                    name=None,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=self.pg, placement_group_bundle_index=bundle
                    ),
                    max_concurrency=1,
                ).remote(*args, **kwargs)
            )
        return RoleGroup(role, actors)

    def shutdown(self) -> None:
        remove_placement_group(self.pg)
