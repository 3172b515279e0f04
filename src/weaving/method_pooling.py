"""Merge methods as poolings (docs/merging.md, "Merge methods as poolings").

`pooling` may name a registered merge method `g` at its own hyper-parameters: the members of a
weave (the taus per `pool_over`, then the points `lam_k * M_c` in member order) are stacked as
task vectors and merged by `g` at lam 1, `pooled = g(members, **params)`. A `MethodPooling` is
that choice once validated (`weaving.request.validate_request` builds it).

Runs (`PoolingRun`) see one key at a time through a `Members` view: the taus, each merge `M_c`
(asked for only when needed) and the stacked members (built at most once per key).

- Generic path (every method; `materialize=True` always takes it): the members of each key are
  built, streamed key by key, and `g`'s own run (over a layout of N = T + K "tasks") sees them,
  statistics passes included (TIES's and PCB's model-wide order statistics are over the members).
- Shortcut (`MergeMethod.as_pooling`, where the structure gives the same numbers exactly): TIES
  (`weaving.methods.ties.TiesPoolingRun`) selects its per-row trim thresholds over the T taus
  and the C merges only, then trims the members with them.

Seeds: a method that draws (DARE) as a pooling takes `params["seed"]` if given, else
`derive_seed("pooling", name, seed)` from the weave's seed: its masks then differ from those of
the same method used as the merge (which uses `seed` itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from weaving.methods.base import Members, MergeMethod, PoolingRun, PoolingShape

__all__ = ["Members", "MethodPooling", "PoolingRun", "PoolingShape"]


@dataclass(frozen=True)
class MethodPooling:
    """A merge method used as the pooling, with its validated hyper-parameters `params`."""

    method: MergeMethod
    params: Mapping[str, float | int] = field(default_factory=dict)
    random: bool = field(default=False, init=False)  # its draws (DARE's) are the method's own

    @property
    def name(self) -> str:
        return self.method.name

    def start(self, shape: PoolingShape, *, materialize: bool = False) -> PoolingRun:
        """The run of this pooling over `shape`'s members (`materialize`: never the shortcut)."""
        if not materialize and self.method.as_pooling is not None:
            return self.method.as_pooling(self.params, shape)
        return PoolingRun(self.method.start(self.params, shape.member_layout))
