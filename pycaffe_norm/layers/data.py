"""Layers that bring data into a net."""
from __future__ import annotations

from ..errors import NetError
from .base import Layer, register


@register("Input")
class InputLayer(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one per top); data is written by the user."""

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = list(self.layer_param.input_param.shape)
        if len(shapes) not in (0, 1, len(top)):
            raise NetError("layer %r (Input): %d input_param.shape entries for %d tops; give 1 or one per top"
                           % (self.name, len(shapes), len(top)))
        for i, t in enumerate(top):
            if shapes:
                t.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # the user reshapes input blobs; Input never overrides that

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
