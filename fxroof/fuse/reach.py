"""Which of a set of sibling groups (the readers of one tensor) each group of the fusion graph
reaches, kept exact while siblings merge: the cycle test of horizontal fusion without a graph
search per pair.

Each sibling owns a bit; a group's mask is the OR of the bits of the siblings it reaches (itself
included), computed once per group, bottom up, only below the last sibling's topological rank (no
path from further down comes back up to a sibling). A merge only adds paths, all through the merged
group: its mask is recomputed and ORed into its ancestors, stopping at those that hold it already
(their own ancestors hold it too). A tensor read by every layer (rotary tables, a mask) costs one
sweep over the depth instead of one search per pair of layers.
"""
from __future__ import annotations

import networkx as nx


class SiblingReach:
    def __init__(self, g: nx.DiGraph, rank: dict, siblings: list):
        self.g, self.rank = g, rank
        self.bits = {gid: 1 << j for j, gid in enumerate(siblings)}   # sibling group -> its bits
        self.hi = max(rank[gid] for gid in siblings)
        self.memo: dict = {}

    def mask(self, x: int) -> int:
        """The bits of the siblings that group x reaches, itself included."""
        memo, succ, rank, hi = self.memo, self.g.succ, self.rank, self.hi
        stack = [x]
        while stack:       # post-order, without recursion: a path can be thousands of groups long
            y = stack[-1]
            if y in memo:
                stack.pop()
                continue
            below = [s for s in succ[y] if rank[s] <= hi]
            todo = [s for s in below if s not in memo]
            if todo:
                stack.extend(todo)
                continue
            m = self.bits.get(y, 0)
            for s in below:
                m |= memo[s]
            memo[y] = m
            stack.pop()
        return memo[x]

    def beyond(self, a: int) -> int:
        """The bits of the siblings a path from a reaches through a third group: a cannot merge
        with them. a's direct successors' own bits are left out (a merge with one of them is
        refused only if another path reaches it, which `blocked` tells)."""
        m = 0
        for s in self.g.succ[a]:
            m |= self.mask(s) & ~self.bits.get(s, 0)
        return m

    def blocked(self, a: int, b: int) -> bool:
        """A path joins siblings a and b through a third group: merging them would close a cycle."""
        if self.rank[a] > self.rank[b]:
            a, b = b, a
        return any(self.mask(s) & self.bits[b] for s in self.g.succ[a] if s != b)

    def merged(self, kept: int, gone: int) -> None:
        """Siblings `gone` and `kept` are one group `kept` now: its mask and its ancestors'."""
        self.bits[kept] |= self.bits.pop(gone)
        self.memo.pop(gone, None)
        self.memo.pop(kept, None)
        m = self.mask(kept)
        stack = [p for p in self.g.pred[kept] if p in self.memo]
        while stack:
            p = stack.pop()
            if self.memo[p] | m != self.memo[p]:
                self.memo[p] |= m
                stack.extend(q for q in self.g.pred[p] if q in self.memo)
