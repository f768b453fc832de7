"""Net: builds a graph of layers from a NetParameter and runs it forward and backward (Caffe's ``Net``)."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Iterable, List, Optional

import numpy as np

from . import backend, parallel, prototxt
from .blob import Blob, MemoryLimitError, memory_budget
from .errors import NetError, PcnError, ShapeError
from .layers import create_layer
from .proto import caffe_pb2
from .upgrade import upgrade_net

log = logging.getLogger("pycaffe_norm")

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


# ----------------------------------------------------------------------------------------------------
# net state rules and split insertion (Caffe's FilterNet / StateMeetsRule / InsertSplits)
# ----------------------------------------------------------------------------------------------------

def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Keeps the layers whose include/exclude rules admit ``param.state``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if lp.include and lp.exclude:
            raise NetError("layer %r: specify either include or exclude rules, not both" % lp.name)
        keep = not lp.include
        if any(state_meets_rule(param.state, r) for r in lp.exclude):
            keep = False
        if any(state_meets_rule(param.state, r) for r in lp.include):
            keep = True
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


def split_layer_name(layer_name: str, blob_name: str, blob_idx: int) -> str:
    return "%s_%s_%d_split" % (layer_name, blob_name, blob_idx)


def split_blob_name(layer_name: str, blob_name: str, blob_idx: int, split_idx: int) -> str:
    return "%s_%s_%d_split_%d" % (layer_name, blob_name, blob_idx, split_idx)


def insert_splits(param: caffe_pb2.NetParameter, loss_weights: List[List[float]]) -> caffe_pb2.NetParameter:
    """Gives every top read by several layers a Split layer, named exactly as Caffe names them.

    ``loss_weights[i][j]`` is the effective loss weight of top j of layer i (a loss top read by another
    layer counts as one more reader, and the loss weight moves to the split's first top).
    """
    last_top = {}           # blob name -> (layer index, top index) that last wrote it
    source_of = {}          # (layer, bottom index) -> (layer, top index)
    readers = {}            # (layer, top index) -> number of readers
    for i, lp in enumerate(param.layer):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise NetError("layer %r (%s): unknown bottom blob %r (no earlier layer produces it)"
                               % (lp.name, lp.type, name))
            src = last_top[name]
            source_of[(i, j)] = src
            readers[src] = readers.get(src, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
            if loss_weights[i][j]:
                readers[(i, j)] = readers.get((i, j), 0) + 1
    if all(n <= 1 for n in readers.values()):
        return param
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = {}
    for i, lp in enumerate(param.layer):
        layer = out.layer.add()
        layer.CopyFrom(lp)
        for j, name in enumerate(lp.bottom):
            src = source_of[(i, j)]
            if readers[src] > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                layer.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
        for j, name in enumerate(lp.top):
            n = readers.get((i, j), 0)
            if n <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(lp.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(n):
                split.top.append(split_blob_name(lp.name, name, j, k))
            weight = loss_weights[i][j]
            if weight:
                split.loss_weight.extend([weight] + [0.0] * (n - 1))
                weights = list(loss_weights[i])
                weights[j] = 0.0
                layer.loss_weight[:] = weights  # explicit zeros: the layer's default weight must not return
                next_split[(i, j)] = 1  # split top 0 carries the loss
    return out


# ----------------------------------------------------------------------------------------------------
# Net
# ----------------------------------------------------------------------------------------------------

class Net:
    """A Caffe net with pycaffe's interface.

    ``Net(model, phase)``, ``Net(model, weights, phase)`` or ``Net(model, phase, weights=..., level=..., stages=...)``;
    ``model`` is a prototxt path or a NetParameter. ``dtype`` (float32 by default) is the blob type.
    """

    def __init__(self, model, *args, phase: Optional[int] = None, weights: Optional[str] = None,
                 level: int = 0, stages: Iterable[str] = (), dtype=np.float32):
        if len(args) == 1:
            phase = args[0]
        elif len(args) == 2:
            weights, phase = args
        elif len(args) > 2:
            raise TypeError("Net(model, phase) or Net(model, weights, phase)")
        if phase is None:
            raise TypeError("Net needs a phase (caffe.TRAIN or caffe.TEST)")
        if phase not in (TRAIN, TEST):
            raise PcnError("phase must be caffe.TRAIN (0) or caffe.TEST (1), got %r" % (phase,))
        if isinstance(model, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(model)
            self.source = "<NetParameter %s>" % model.name
        else:
            param = prototxt.read_text(model, caffe_pb2.NetParameter(), "net prototxt")
            self.source = str(model)
        param = upgrade_net(param)
        param.state.phase = phase
        if level:
            param.state.level = level
        param.state.stage.extend([s for s in stages if s not in param.state.stage])
        self.phase = phase
        self.dtype = np.dtype(dtype)
        with memory_budget():
            self._init(param)
        if weights is not None:
            self.copy_from(weights)

    # --- construction ----------------------------------------------------------------------------------
    def _init(self, in_param: caffe_pb2.NetParameter) -> None:
        param = filter_net(in_param)
        self.name = param.name
        self.force_backward = param.force_backward
        self.state = caffe_pb2.NetState()
        self.state.CopyFrom(param.state)
        xp = backend.xp_for_mode()
        self._numpy = xp is np  # the pass context splits NumPy work over the thread pool
        # Layers are created before split insertion so their loss weights are known.
        layer_params = list(param.layer)
        for lp in layer_params:
            if not lp.HasField("phase"):
                lp.phase = self.phase
        protos = [create_layer(lp, self.phase) for lp in layer_params]
        # Caffe's AutoTopBlobs: a loss layer written without a top gets an anonymous one, which adds to the loss
        # but is no net output (BVLC's pascal finetune net relies on it).
        auto_tops = set()
        for lp, layer in zip(layer_params, protos):
            if layer.is_loss and not lp.top:
                lp.top.append("%s (automatic)" % lp.name)
                auto_tops.add(lp.top[0])
        loss_weights = [self._loss_weights(lp, layer) for lp, layer in zip(layer_params, protos)]
        param_with_splits = insert_splits(param, loss_weights)
        self.layer_params: List[caffe_pb2.LayerParameter] = []
        self.layers = []
        self._blob_names: List[str] = []
        self._blobs: List[Blob] = []
        self.bottom_vecs: List[List[Blob]] = []
        self.top_vecs: List[List[Blob]] = []
        self.bottom_ids: List[List[int]] = []
        self.top_ids: List[List[int]] = []
        self.bottom_need_backward: List[List[bool]] = []
        self.layer_need_backward: List[bool] = []
        self.top_loss_weights: List[List[float]] = []
        self.input_blob_indices: List[int] = []
        blob_need_backward: List[bool] = []
        name_to_idx = {}
        available = set()
        self._param_owner = {}       # ParamSpec.name -> (layer index, param index)
        self.learnable_params: List[Blob] = []
        self.params_lr: List[float] = []
        self.params_weight_decay: List[float] = []
        made = iter(protos)
        original = [lp.name for lp in layer_params]
        k = 0
        for lp in param_with_splits.layer:
            if k < len(original) and lp.name == original[k]:
                layer = next(made)
                layer.layer_param = lp
                k += 1
            else:  # a Split the net inserted
                lp.phase = self.phase
                layer = create_layer(lp, self.phase)
            layer_id = len(self.layers)
            self.layers.append(layer)
            self.layer_params.append(lp)
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetError("layer %r: propagate_down has %d entries for %d bottoms"
                               % (lp.name, len(lp.propagate_down), len(lp.bottom)))
            bottoms, bids, bneed = [], [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise NetError("layer %r (%s): unknown bottom blob %r" % (lp.name, lp.type, name))
                bid = name_to_idx[name]
                available.discard(name)
                need = blob_need_backward[bid]
                if lp.propagate_down:
                    need = bool(lp.propagate_down[j])
                bottoms.append(self._blobs[bid])
                bids.append(bid)
                bneed.append(need)
                need_backward |= blob_need_backward[bid]
            tops, tids = [], []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    if not layer.allow_in_place:
                        raise NetError("layer %r (%s) cannot compute in place (top %r equals its bottom)"
                                       % (lp.name, lp.type, name))
                    tid = bids[j]
                elif name in name_to_idx:
                    # Caffe allows re-producing a name only in place; anything else is a wiring error.
                    raise NetError("layer %r (%s): top blob %r is produced by more than one layer"
                                   % (lp.name, lp.type, name))
                else:
                    tid = len(self._blobs)
                    self._blobs.append(Blob((), dtype=self.dtype, xp=xp))
                    self._blob_names.append(name)
                    blob_need_backward.append(False)
                    name_to_idx[name] = tid
                tops.append(self._blobs[tid])
                tids.append(tid)
                available.add(name)
                if lp.type == "Input":
                    self.input_blob_indices.append(tid)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_ids.append(bids)
            self.top_ids.append(tids)
            self.bottom_need_backward.append(bneed)
            if lp.blobs:
                layer.blobs = [_blob_from_proto(b, self.dtype, xp) for b in lp.blobs]
            try:
                layer.initialize(bottoms, tops)
            except MemoryLimitError as e:
                raise MemoryLimitError("layer %r (%s): %s" % (lp.name, lp.type, e)) from None
            except ShapeError:
                raise
            except PcnError:
                raise
            except (ValueError, IndexError) as e:
                shapes = ", ".join(str(b.shape) for b in bottoms)
                raise NetError("layer %r (%s) cannot be set up for bottom shapes [%s]: %s"
                               % (lp.name, lp.type, shapes, e)) from None
            weights = self._loss_weights(lp, layer)
            self.top_loss_weights.append(weights)
            for t, w in zip(tops, weights):
                if w:
                    t.diff[...] = w
            log.debug("%s (%s): top shapes %s", lp.name, lp.type, [t.shape for t in tops])
            need_backward |= self._append_params(layer_id, layer, lp)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for tid in tids:
                    blob_need_backward[tid] = True
        self._refuse_duplicate_param_layers()
        self._prune_backward(blob_need_backward)
        self.blob_need_backward = blob_need_backward
        self._warn_in_place_overwrites()
        self.output_blob_indices = [name_to_idx[n] for n in sorted(available - auto_tops)]
        self._layer_index = {lp.name: i for i, lp in enumerate(self.layer_params)}
        self._blob_index = {n: i for i, n in enumerate(self._blob_names)}

    @staticmethod
    def _loss_weights(lp: caffe_pb2.LayerParameter, layer) -> List[float]:
        n = len(lp.top)
        if lp.loss_weight:
            if len(lp.loss_weight) > n:
                raise NetError("layer %r: %d loss_weight values for %d tops" % (lp.name, len(lp.loss_weight), n))
            return list(lp.loss_weight) + [0.0] * (n - len(lp.loss_weight))
        return [1.0 if (layer.is_loss and j == 0) else 0.0 for j in range(n)]

    def _append_params(self, layer_id: int, layer, lp: caffe_pb2.LayerParameter) -> bool:
        n = len(layer.blobs)
        if len(lp.param) > n:
            raise NetError("layer %r (%s): %d param specs given but the layer has %d parameter blobs"
                           % (lp.name, lp.type, len(lp.param), n))
        fixed = set(getattr(layer, "fixed_param_indices", lambda: [])())
        need_backward = False
        for i in range(n):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            lr_mult = spec.lr_mult
            if i in fixed:
                if spec.HasField("lr_mult") and spec.lr_mult != 0:
                    log.warning("layer %r (%s): parameter blob %d holds statistics and cannot learn; its lr_mult %g "
                                "is set to 0", lp.name, lp.type, i, spec.lr_mult)
                lr_mult = 0.0
            if lp.freeze_learning:   # MyCaffe: the layer's parameters are not updated
                lr_mult = 0.0
            learns = lr_mult != 0
            need_backward |= learns
            layer.set_param_propagate_down(i, learns)
            blob = layer.blobs[i]
            if spec.name and spec.name in self._param_owner:
                owner_layer, owner_i = self._param_owner[spec.name]
                owner = self.layers[owner_layer].blobs[owner_i]
                strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
                if (strict and owner.shape != blob.shape) or owner.count != blob.count:
                    raise ShapeError("layer %r: shared parameter %r has shape %s, but its owner in layer %r has %s"
                                     % (lp.name, spec.name, blob.shape, self.layers[owner_layer].name, owner.shape))
                blob.share_data(owner)
                blob.share_diff(owner)
                k = self.learnable_params.index(owner)
                if spec.HasField("lr_mult") and self.params_lr[k] != lr_mult:
                    raise NetError("layer %r: shared parameter %r has lr_mult %g, its owner %g"
                                   % (lp.name, spec.name, lr_mult, self.params_lr[k]))
                continue
            if spec.name:
                self._param_owner[spec.name] = (layer_id, i)
            self.learnable_params.append(blob)
            self.params_lr.append(lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
        return need_backward

    def _refuse_duplicate_param_layers(self) -> None:
        """Weights are saved and loaded by layer name: two layers with parameters under one name would give
        snapshots that cannot be loaded back."""
        owners = {}
        for i, (lp, layer) in enumerate(zip(self.layer_params, self.layers)):
            if not layer.blobs:
                continue
            if lp.name in owners:
                j = owners[lp.name]
                raise NetError("layers #%d (%s) and #%d (%s) are both named %r and both have parameters; weights are "
                               "saved and loaded by layer name, so give them different names"
                               % (j, self.layer_params[j].type, i, lp.type, lp.name))
            owners[lp.name] = i

    def _warn_in_place_overwrites(self) -> None:
        """Warns when an in-place layer overwrites a top that its producer reads in backward (e.g. LRN, MVN,
        Sigmoid): Caffe computes wrong gradients for such a prototxt without a word."""
        for i, layer in enumerate(self.layers):
            if not (layer.backward_reads_top and self.layer_need_backward[i]):
                continue
            for tid in self.top_ids[i]:
                for j in range(i + 1, len(self.layers)):
                    if tid in self.top_ids[j] and tid in self.bottom_ids[j]:
                        later, producer = self.layer_params[j], self.layer_params[i]
                        log.warning("layer %r (%s) computes in place on blob %r, which layer %r (%s) reads in its "
                                    "backward pass: its gradients will be wrong; give %r its own top blob",
                                    later.name, later.type, self._blob_names[tid], producer.name, producer.type,
                                    later.name)
                        break

    def _prune_backward(self, blob_need_backward: List[bool]) -> None:
        """Caffe's pass from the last layer back: layers that contribute to no loss skip backward."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            contributes = False
            skip_down = True
            for j, tid in enumerate(self.top_ids[i]):
                if self.top_loss_weights[i][j] or tid in under_loss:
                    contributes = True
                if tid not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_ids[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, bid in enumerate(self.bottom_ids[i]):
                if contributes:
                    under_loss.add(bid)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(bid)
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                for j, bid in enumerate(self.bottom_ids[i]):
                    need = self.bottom_need_backward[i][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[i][j] = need
                    blob_need_backward[bid] = blob_need_backward[bid] or need
                for k in range(len(layer.blobs)):
                    layer.set_param_propagate_down(k, True)

    # --- pycaffe surface -----------------------------------------------------------------------------------
    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        return OrderedDict(zip(self._blob_names, self._blobs))

    @property
    def params(self) -> "OrderedDict[str, List[Blob]]":
        return OrderedDict((lp.name, layer.blobs) for lp, layer in zip(self.layer_params, self.layers) if layer.blobs)

    @property
    def layer_dict(self):
        return OrderedDict((lp.name, layer) for lp, layer in zip(self.layer_params, self.layers))

    @property
    def _layer_names(self) -> List[str]:
        return [lp.name for lp in self.layer_params]

    @property
    def inputs(self) -> List[str]:
        return [self._blob_names[i] for i in self.input_blob_indices]

    @property
    def outputs(self) -> List[str]:
        return [self._blob_names[i] for i in self.output_blob_indices]

    @property
    def top_names(self):
        return OrderedDict((lp.name, list(lp.top)) for lp in self.layer_params)

    @property
    def bottom_names(self):
        return OrderedDict((lp.name, list(lp.bottom)) for lp in self.layer_params)

    @property
    def blob_loss_weights(self):
        weights = OrderedDict((n, 0.0) for n in self._blob_names)
        for tids, ws in zip(self.top_ids, self.top_loss_weights):
            for tid, w in zip(tids, ws):
                if w:
                    weights[self._blob_names[tid]] = w
        return weights

    def layer_index(self, name: str) -> int:
        try:
            return self._layer_index[name]
        except KeyError:
            raise PcnError("net %r has no layer %r" % (self.name, name)) from None

    # --- running ------------------------------------------------------------------------------------------
    def _forward(self, start: int, end: int) -> float:
        with parallel.pass_context(self._numpy):
            return self._forward_layers(start, end)

    def _forward_layers(self, start: int, end: int) -> float:
        loss = 0.0
        for i in range(start, end + 1):
            layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
            for fn in self._before_forward:
                fn(i)
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            for t, w in zip(top, self.top_loss_weights[i]):
                if w:
                    loss += float((t.data * t.diff).sum())
            for fn in self._after_forward:
                fn(i)
        return loss

    def _backward(self, start: int, end: int) -> None:
        with parallel.pass_context(self._numpy):
            self._backward_layers(start, end)

    def _backward_layers(self, start: int, end: int) -> None:
        for i in range(start, end - 1, -1):
            for fn in self._before_backward:
                fn(i)
            if self.layer_need_backward[i]:
                self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
            for fn in self._after_backward:
                fn(i)

    # Caffe's Net::Callback lists, called with the layer index around every layer's pass (pycaffe's
    # net.before_forward(fn) ...; caffe.NCCL registers itself with after_backward to sum gradients early).
    _before_forward: tuple = ()
    _after_forward: tuple = ()
    _before_backward: tuple = ()
    _after_backward: tuple = ()

    def _add_hook(self, name: str, fn: Callable[[int], None]) -> None:
        if not callable(fn):
            raise PcnError("net.%s takes a callable of the layer index, got %r" % (name[1:], fn))
        setattr(self, name, tuple(getattr(self, name)) + (fn,))

    def before_forward(self, fn: Callable[[int], None]) -> None:
        self._add_hook("_before_forward", fn)

    def after_forward(self, fn: Callable[[int], None]) -> None:
        self._add_hook("_after_forward", fn)

    def before_backward(self, fn: Callable[[int], None]) -> None:
        self._add_hook("_before_backward", fn)

    def after_backward(self, fn: Callable[[int], None]) -> None:
        self._add_hook("_after_backward", fn)

    def _named_blob(self, name: str) -> Blob:
        if name not in self._blob_index:
            raise PcnError("net %r has no blob %r" % (self.name, name))
        return self._blobs[self._blob_index[name]]

    def _set_inputs(self, kwargs, diff: bool = False) -> None:
        for name, value in kwargs.items():
            blob = self._named_blob(name)
            arr = blob.diff if diff else blob.data
            value = np.asarray(value) if not backend.is_gpu_array(value) else value
            if value.shape != arr.shape:
                raise ShapeError("blob %r has shape %s, the array given has shape %s"
                                 % (name, arr.shape, value.shape))
            arr[...] = blob.xp.asarray(value)

    def forward(self, blobs: Optional[List[str]] = None, start: Optional[str] = None, end: Optional[str] = None,
                **kwargs):
        """Runs forward from layer ``start`` to ``end`` (names); keyword arguments fill blobs first.

        Returns {blob name: data} for the net outputs (or ``end``'s tops) plus ``blobs``.
        """
        extra = list(blobs or [])
        for name in extra:   # an unknown name fails before anything runs
            self._named_blob(name)
        self._set_inputs(kwargs)
        s = self.layer_index(start) if start is not None else 0
        e = self.layer_index(end) if end is not None else len(self.layers) - 1
        self._forward(s, e)
        names = list(self.outputs) if end is None else list(self.layer_params[e].top)
        names += [b for b in extra if b not in names]
        return {n: self._named_blob(n).data for n in names}

    def backward(self, diffs: Optional[List[str]] = None, start: Optional[str] = None, end: Optional[str] = None,
                 **kwargs):
        """Runs backward from layer ``start`` down to ``end``; keyword arguments fill top diffs first.

        Returns {blob name: diff} for the net inputs (or ``end``'s bottoms) plus ``diffs``.
        """
        extra = list(diffs or [])
        for name in extra:   # an unknown name fails before anything runs
            self._named_blob(name)
        self._set_inputs(kwargs, diff=True)
        s = self.layer_index(start) if start is not None else len(self.layers) - 1
        e = self.layer_index(end) if end is not None else 0
        self._backward(s, e)
        names = list(self.inputs) if end is None else list(self.layer_params[e].bottom)
        names += [b for b in extra if b not in names]
        return {n: self._named_blob(n).diff for n in names}

    def forward_backward(self) -> float:
        """One forward and backward pass over the whole net; returns the loss."""
        loss = self._forward(0, len(self.layers) - 1)
        self._backward(len(self.layers) - 1, 0)
        return loss

    def forward_loss(self) -> float:
        return self._forward(0, len(self.layers) - 1)

    def reshape(self) -> None:
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def clear_param_diffs(self) -> None:
        for p in self.learnable_params:
            p.diff[...] = 0

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's ``set_input_arrays``: gives ``data`` (N, C, H, W) and ``labels`` (N,) to the net's first
        layer, which must be a MemoryData layer (as in pycaffe); N must be a multiple of its batch size."""
        first = self.layers[0] if self.layers else None
        if not hasattr(first, "set_input_arrays"):
            raise PcnError("set_input_arrays may only be called if the first layer is a MemoryData layer "
                           "(net %r starts with %r)" % (self.name, first))
        first.set_input_arrays(data, labels)

    # --- batched runs (pycaffe's forward_all / forward_backward_all) ---------------------------------------
    def _batch(self, arrays):
        """Yields ({name: batch}, valid) over ``arrays`` (first axis = sample) at the blobs' batch size.

        The last batch is zero-padded to full size, as in pycaffe; ``valid`` says how many of its rows are real.
        """
        if not arrays:  # nothing to feed: one pass over what data layers or earlier calls put in the blobs
            yield {}, None
            return
        arrays = {n: backend.to_numpy(v) for n, v in arrays.items()}
        for name in arrays:
            if name not in self._blob_index:
                raise PcnError("net %r has no blob %r" % (self.name, name))
        shapes = {n: tuple(self._blobs[self._blob_index[n]].shape) for n in arrays}
        for name, shape in shapes.items():
            if not shape:
                raise ShapeError("batched run: blob %r has shape () with no batch axis (a loss?); only blobs with "
                                 "a batch axis can be fed per sample" % name)
        sizes = {n: shape[0] for n, shape in shapes.items()}
        lengths = {n: len(v) for n, v in arrays.items()}
        if len(set(sizes.values())) != 1 or len(set(lengths.values())) != 1:
            raise ShapeError("batched run: the blobs' batch sizes %s and the arrays' lengths %s must each agree"
                             % (sizes, lengths))
        batch_size, num = next(iter(sizes.values())), next(iter(lengths.values()))
        for i in range(0, num, batch_size):
            valid = min(batch_size, num - i)
            batch = {}
            for n, v in arrays.items():
                batch[n] = v[i:i + batch_size]
                if valid < batch_size:
                    batch[n] = np.concatenate([batch[n], np.zeros((batch_size - valid,) + v.shape[1:], v.dtype)])
            yield batch, valid

    @staticmethod
    def _gather(acc, outs, valid) -> None:
        # copies, because the next batch overwrites the blobs; 0-d blobs (losses) give one value per batch
        for n, v in outs.items():
            v = backend.to_numpy(v)
            acc.setdefault(n, []).append(v.copy()[None] if v.ndim == 0 else v[:valid].copy())

    def forward_all(self, blobs: Optional[List[str]] = None, **kwargs):
        """Runs forward over input arrays of any length, one net batch at a time (pycaffe's ``forward_all``).

        Returns {blob name: NumPy array} for the outputs plus ``blobs``, with the last batch's padding trimmed.
        """
        acc = {}
        for batch, valid in self._batch(kwargs):
            self._gather(acc, self.forward(blobs=blobs, **batch), valid)
        return {n: np.concatenate(v) for n, v in acc.items()}

    def forward_backward_all(self, blobs: Optional[List[str]] = None, diffs: Optional[List[str]] = None, **kwargs):
        """Forward and backward per batch: keyword arrays fill inputs (data) and outputs (diffs).

        Returns ({blob: data}, {blob: diff}) as ``forward_all`` does, for outputs + ``blobs`` and inputs + ``diffs``.
        """
        tops = {n: v for n, v in kwargs.items() if n in self.outputs}
        unknown = [n for n in kwargs if n not in self.inputs and n not in tops]
        if unknown:
            raise PcnError("forward_backward_all: %s are neither inputs %s nor outputs %s of net %r"
                           % (unknown, self.inputs, self.outputs, self.name))
        all_blobs, all_diffs = {}, {}
        for batch, valid in self._batch(kwargs):
            fwd = self.forward(blobs=blobs, **{n: v for n, v in batch.items() if n not in tops})
            self._gather(all_blobs, fwd, valid)
            self._gather(all_diffs, self.backward(diffs=diffs, **{n: v for n, v in batch.items() if n in tops}), valid)
        return ({n: np.concatenate(v) for n, v in all_blobs.items()},
                {n: np.concatenate(v) for n, v in all_diffs.items()})

    # --- weights ------------------------------------------------------------------------------------------
    def share_with(self, other: "Net") -> None:
        """Shares the parameter blobs of same-named layers of ``other`` (Caffe's ShareTrainedLayersWith)."""
        mine = self.layer_dict
        for name, layer in other.layer_dict.items():
            target = mine.get(name)
            if target is None or not layer.blobs:
                continue
            if len(target.blobs) != len(layer.blobs):
                raise NetError("layer %r has %d parameter blobs here and %d in the net it shares with"
                               % (name, len(target.blobs), len(layer.blobs)))
            for i, (mine_b, src) in enumerate(zip(target.blobs, layer.blobs)):
                if mine_b.shape != src.shape:
                    raise ShapeError("layer %r parameter %d: shape %s here, %s in the shared net"
                                     % (name, i, mine_b.shape, src.shape))
                mine_b.share_data(src)

    def copy_from(self, weights: str) -> None:
        """Loads parameters from a .caffemodel (binary NetParameter) or .caffemodel.h5, matching layers by name."""
        from .io import load_weights
        load_weights(self, weights)

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        from .io import net_to_proto
        return net_to_proto(self, write_diff)

    def save(self, path: str, write_diff: bool = False) -> None:
        """Writes the net's parameters as a binary .caffemodel (atomically)."""
        prototxt.write_binary(path, self.to_proto(write_diff))

    def save_hdf5(self, path: str) -> None:
        from .io import save_hdf5
        save_hdf5(self, path)

    def load_hdf5(self, path: str) -> None:
        from .io import load_hdf5
        load_hdf5(self, path)


def _blob_from_proto(bp: caffe_pb2.BlobProto, dtype, xp) -> Blob:
    from .io import blobproto_to_array
    arr = blobproto_to_array(bp)
    b = Blob(arr.shape, dtype=dtype, xp=xp)
    b.data[...] = xp.asarray(arr)
    return b
