"""A role's replicas as the driver calls them: one worker group.

For a trainable role (policy, critic) the replicas are the ranks of one
sharded data-parallel group: :meth:`WorkerGroup.rendezvous` forms the
``torch.distributed`` group (rank 0's address and a free port), and every
call that touches the model goes to *all* ranks -- each forward, backward,
gather and checkpoint is a collective. :meth:`WorkerGroup.train` gives each
rank its slice of the batch (``orchestrator/dispatch.py``) and returns rank
0's metrics, which the ranks have already summed over the group.

For the frozen roles (reference, reward) the replicas are independent
copies; :meth:`WorkerGroup.map_rows` has each score a contiguous slice of a
batch and joins the results in order. The same call serves a sharded group,
whose ranks must all be called.
"""

from __future__ import annotations

import ray

from hbat.orchestrator.checkpoint import wait_all
from hbat.orchestrator.dispatch import join_rows, split_parts, split_rows
from hbat.orchestrator.placement import RoleGroup


class GroupCall:
    """Calls in flight on every rank; :meth:`get` waits for all and returns rank 0's result."""

    def __init__(self, refs: list):
        self.refs = refs

    def get(self):
        return wait_all(self.refs)[0]


class WorkerGroup(RoleGroup):
    sharded: bool = False

    @property
    def world(self) -> int:
        return len(self.actors)

    def rendezvous(self, timeout_s: float = 300) -> None:
        """Form the group's process group (and shard the model over it)."""
        host, port = ray.get(self.actors[0].node_address.remote())
        wait_all([a.join_group.remote(i, self.world, host, port, timeout_s) for i, a in enumerate(self.actors)])
        self.sharded = True

    # -- calls ------------------------------------------------------------------
    def all(self, method: str, *args, **kwargs) -> GroupCall:
        """The same call on every rank (sharded) or on the one trainer."""
        targets = self.actors if self.sharded else self.actors[:1]
        return GroupCall([getattr(a, method).remote(*args, **kwargs) for a in targets])

    def run(self, method: str, *args, **kwargs):
        """:meth:`all`, waited for: rank 0's result."""
        return self.all(method, *args, **kwargs).get()

    def train(self, parts: list, optim) -> GroupCall:
        """``train_step`` with each rank's slice of every loss part."""
        targets = self.actors if self.sharded else self.actors[:1]
        per_rank = split_parts(parts, len(targets), optim.grad_accum, optim.max_tokens_per_micro)
        return GroupCall([a.train_step.remote(p) for a, p in zip(targets, per_rank)])

    def train_rows(self, method: str, data, total: int, *args, paired: bool = False) -> GroupCall:
        """``method(slice, *args, total=total)`` on each rank's slice of ``data``'s rows
        (``total``: the batch's loss units, for the global mean); unsharded, the
        one trainer gets the whole batch."""
        if not self.sharded:
            return GroupCall([getattr(self.actors[0], method).remote(data, *args)])
        slices = split_rows(data, self.world, paired=paired)
        if len(slices) < self.world:
            raise ValueError(f"a batch of {total} units cannot be split over the {self.world} ranks of {self.name}")
        return GroupCall([getattr(a, method).remote(s, *args, total=total) for a, s in zip(self.actors, slices)])

    def map_rows(self, method: str, data, *args, **kwargs) -> "RowsCall":
        """``method(slice, ...)`` on each replica's contiguous slice of ``data``'s rows."""
        targets = self.actors if (self.sharded or len(self.actors) > 1) else self.actors[:1]
        slices = split_rows(data, len(targets))
        if self.sharded and len(slices) < len(targets):
            raise ValueError(f"{len(data) if hasattr(data, '__len__') else '?'} rows cannot be split over the "
                             f"{len(targets)} ranks of the {self.name} group")
        return RowsCall([getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(targets, slices)])


class RowsCall:
    def __init__(self, refs: list):
        self.refs = refs

    def get(self):
        return join_rows(wait_all(self.refs))
