"""Which of a set of sibling groups (the readers of one tensor) each group of the fusion graph
reaches, kept exact while siblings merge: the cycle test of horizontal fusion without a graph
search per pair.

Each sibling owns a bit; a group's mask is the OR of the bits of the siblings it reaches (itself
included), computed once per group, depth first, only below the last sibling's topological rank (no
path from further down comes back up to a sibling), and no further once it holds every sibling
ranked after the group. A merge only adds paths, all through the merged group: the masks are
computed again from then on. A tensor read by every layer (rotary tables, a mask) costs one sweep
over the depth instead of one search per pair of layers; one read in a forward and again in its
backward, a few steps from the first reader to the second instead of every group between them.
"""
from __future__ import annotations

from bisect import bisect_right

import networkx as nx


class SiblingReach:
    def __init__(self, g: nx.DiGraph, rank: dict, siblings: list):
        self.g, self.rank = g, rank
        self.bits = {gid: 1 << j for j, gid in enumerate(siblings)}   # sibling group -> its bits
        self.hi = max(rank[gid] for gid in siblings)
        self.memo: dict = {}
        self._after: tuple | None = None   # (sorted sibling ranks, bits ranked from each on)

    def mask(self, x: int) -> int:
        """The bits of the siblings that group x reaches, itself included."""
        memo = self.memo
        if x in memo:
            return memo[x]
        succ, rank, hi, bits = self.g.succ, self.rank, self.hi, self.bits
        ranks, after = self._ranked_after()

        def frame(y: int) -> list:
            own = bits.get(y, 0)
            return [y, [s for s in succ[y] if rank[s] <= hi], 0, own,
                    after[bisect_right(ranks, rank[y])] | own]

        stack = [frame(x)]
        while stack:       # depth first, without recursion: a path can be thousands of groups long
            top = stack[-1]
            y, below, i, m, most = top
            while i < len(below) and m != most and below[i] in memo:
                m |= memo[below[i]]
                i += 1
            if i < len(below) and m != most:
                top[2], top[3] = i, m
                stack.append(frame(below[i]))
                continue
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

    def _ranked_after(self) -> tuple:
        """What a group can reach at most: the siblings ranked after it (ranks are topological),
        itself included; (the siblings' ranks sorted, the bits of those from each position on).
        A group that reaches all of them needs none of its other successors looked at: a forward
        tensor's reader reaches its backward reader in a few steps, where a full sweep would
        cover every group in between. Kept until a merge changes the bits."""
        if self._after is None:
            order = sorted((self.rank[g], b) for g, b in self.bits.items())
            after = [0] * (len(order) + 1)
            for i in range(len(order) - 1, -1, -1):
                after[i] = after[i + 1] | order[i][1]
            self._after = ([r for r, _ in order], after)
        return self._after

    def merged(self, kept: int, gone: int) -> None:
        """Siblings `gone` and `kept` are one group `kept` now. Every mask is computed again:
        one that stopped early left groups below it without theirs, so an ancestor walk from
        the merged group would not reach it."""
        self.bits[kept] |= self.bits.pop(gone)
        self.memo.clear()
        self._after = None
