"""Structural layers that move or combine data without arithmetic of their own."""
from __future__ import annotations

from .base import Layer, register


@register("Split")
class SplitLayer(Layer):
    """Copies one bottom to several tops; backward sums the tops' diffs. The Net inserts these itself."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        if len(top) == 1:
            diff[...] = top[0].diff
            return
        bottom[0].xp.add(top[0].diff, top[1].diff, out=diff)
        for t in top[2:]:
            diff += t.diff
