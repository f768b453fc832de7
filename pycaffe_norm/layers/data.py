"""Layers that bring data into a net."""
from __future__ import annotations

import logging
import os
from typing import List

import numpy as np

from ..data.paths import resolve_path
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from ..random import rng
from .base import Layer, register

log = logging.getLogger("pycaffe_norm")


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


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Batches of rows from the .h5 files that ``hdf5_data_param.source`` lists (Caffe's HDF5DataLayer).

    Top ``k`` reads the dataset named like top ``k``. Each file is loaded whole; rows are served in file order,
    or, with ``shuffle``, in a permutation that is drawn again at every pass over a file (and the file order at
    every pass over the list), as Caffe does. The shuffles come from a generator seeded once from
    :func:`pycaffe_norm.random.rng`, so they do not depend on other layers' draws and a resumed solver can
    replay them (:meth:`restore_position`).
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            raise NetError("layer %r (HDF5Data): HDF5Data does not transform data; remove transform_param"
                           % self.name)
        if p.batch_size <= 0:
            raise NetError("layer %r (HDF5Data): hdf5_data_param.batch_size must be > 0, got %d"
                           % (self.name, p.batch_size))
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.top_names = list(self.layer_param.top)
        self.dtype = top[0].dtype
        self.source = self._resolve_source(p.source)
        self.files = self._read_list(self.source)
        self._row_counts = {}
        self._seed = int(rng().randint(0, 2**31 - 1)) if self.shuffle else 0
        self._reset()
        for t, arr in zip(top, self._arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])
        self._item_shapes = [arr.shape[1:] for arr in self._arrays]

    # --- files --------------------------------------------------------------------------------------------
    def _resolve_source(self, source: str) -> str:
        if not source:
            raise NetError("layer %r (HDF5Data): hdf5_data_param.source is empty; give a text file listing .h5 "
                           "files" % self.name)
        found = resolve_path(source)
        if found is None:
            raise NetError("layer %r (HDF5Data): source list file not found: %s (working directory: %s)"
                           % (self.name, source, os.getcwd()))
        log.info("Loading list of HDF5 filenames from: %s", found)
        return found

    def _read_list(self, source: str) -> List[str]:
        with open(source) as f:
            entries = [line.strip() for line in f if line.strip()]
        if not entries:
            raise NetError("layer %r (HDF5Data): %s lists no .h5 files" % (self.name, source))
        anchor = os.path.dirname(os.path.abspath(source))
        files = []
        for entry in entries:
            found = resolve_path(entry, [anchor])
            if found is None:
                raise NetError("layer %r (HDF5Data): HDF5 file %s (listed in %s) not found"
                               % (self.name, entry, source))
            files.append(found)
        log.info("Number of HDF5 files: %d", len(files))
        return files

    def _open(self, path: str):
        import h5py

        try:
            return h5py.File(path, "r")
        except OSError as e:
            raise NetError("layer %r (HDF5Data): cannot read HDF5 file %s: %s" % (self.name, path, e)) from None

    def _load(self, file_index: int) -> None:
        """Reads every top's dataset of file ``file_index`` into memory, in the top blobs' dtype."""
        path = self.files[file_index]
        arrays = []
        with self._open(path) as f:
            for name in self.top_names:
                ds = f.get(name)
                if ds is None or not hasattr(ds, "shape"):
                    raise NetError("layer %r (HDF5Data): %s has no dataset %r for top %r (datasets: %s)"
                                   % (self.name, path, name, name, ", ".join(sorted(f.keys())) or "none"))
                if ds.dtype.kind not in "fiub":
                    raise NetError("layer %r (HDF5Data): dataset %r in %s has type %s; HDF5Data reads numbers only"
                                   % (self.name, name, path, ds.dtype))
                if len(ds.shape) < 1:
                    raise NetError("layer %r (HDF5Data): dataset %r in %s is a scalar; it needs a first (row) axis"
                                   % (self.name, name, path))
                arrays.append(np.ascontiguousarray(ds[...], dtype=self.dtype))
        counts = [a.shape[0] for a in arrays]
        if len(set(counts)) != 1:
            raise NetError("layer %r (HDF5Data): datasets in %s have different numbers of rows: %s"
                           % (self.name, path, ", ".join("%s %d" % kv for kv in zip(self.top_names, counts))))
        if counts[0] == 0:
            raise NetError("layer %r (HDF5Data): datasets in %s have no rows" % (self.name, path))
        shapes = getattr(self, "_item_shapes", None)
        if shapes is not None:
            for name, a, s in zip(self.top_names, arrays, shapes):
                if a.shape[1:] != s:
                    raise self.shape_error("dataset %r in %s (one row)" % (name, path), a.shape[1:], s)
        self._arrays = arrays
        self._loaded = file_index
        self._row_counts[file_index] = counts[0]

    def _row_count(self, file_index: int) -> int:
        if file_index not in self._row_counts:
            with self._open(self.files[file_index]) as f:
                ds = f.get(self.top_names[0])
                count = int(ds.shape[0]) if getattr(ds, "shape", ()) else None
            if count is None:
                self._load(file_index)  # raises the full error
            else:
                self._row_counts[file_index] = count
        return self._row_counts[file_index]

    # --- position -----------------------------------------------------------------------------------------
    def _reset(self) -> None:
        """The state right after setup: first file (of a shuffled order) loaded, rows (shuffled) from row 0."""
        self._rng = np.random.RandomState(self._seed)
        self._file_order = np.arange(len(self.files))
        if self.shuffle:
            self._rng.shuffle(self._file_order)
        self._current_file = 0
        self._start_file(load=True)
        self._row = 0

    def _start_file(self, load: bool) -> None:
        index = int(self._file_order[self._current_file])
        if load:
            self._load(index)
        self._num_rows = self._row_count(index)
        self._perm = np.arange(self._num_rows)
        if self.shuffle:
            self._rng.shuffle(self._perm)

    def _end_of_file(self, load: bool) -> None:
        # Caffe's Next(): move to the next file (reshuffling the order after the last one), then reshuffle rows.
        if len(self.files) > 1:
            self._current_file += 1
            if self._current_file == len(self.files):
                self._current_file = 0
                if self.shuffle:
                    self._rng.shuffle(self._file_order)
                log.debug("layer %r: looping around to the first HDF5 file", self.name)
            self._start_file(load)
        self._row = 0
        if self.shuffle:
            self._rng.shuffle(self._perm)

    def restore_position(self, batches: int) -> None:
        """Puts the layer where it would be after ``batches`` forward passes from setup (used by Solver.restore)."""
        self._reset()
        remaining = int(batches) * self.batch_size
        while remaining > 0:
            take = min(remaining, self._num_rows - self._row)
            self._row += take
            remaining -= take
            if self._row == self._num_rows:
                self._end_of_file(load=False)
        index = int(self._file_order[self._current_file])
        if self._loaded != index:
            self._load(index)

    # --- verbs --------------------------------------------------------------------------------------------
    def reshape(self, bottom, top):
        pass  # tops are shaped once in setup, as in Caffe

    def forward(self, bottom, top):
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, self._num_rows - self._row)
            rows = self._perm[self._row:self._row + take]
            for t, arr in zip(top, self._arrays):
                dst = t.data[filled:filled + take]
                if t.xp is np:
                    np.take(arr, rows, axis=0, out=dst)
                else:
                    dst[...] = t.xp.asarray(arr[rows])
            filled += take
            self._row += take
            if self._row == self._num_rows:
                self._end_of_file(load=True)

    def backward(self, top, propagate_down, bottom):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by ``dummy_data_param.data_filler`` (Caffe's DummyDataLayer).

    Constant fillers fill once at setup; other fillers draw new values at every forward pass.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise NetError("layer %r (DummyData): %d data_filler entries for %d tops; give 0, 1 or one per top"
                           % (self.name, nf, n))
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if p.shape:
                raise NetError("layer %r (DummyData): give either shape or num/channels/height/width, not both"
                               % self.name)
            for field, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n):
                    raise NetError("layer %r (DummyData): %d %s entries for %d tops; give 1 or one per top"
                                   % (self.name, len(values), field, n))
            shapes = [tuple(int(v[0 if len(v) == 1 else i]) for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise NetError("layer %r (DummyData): %d shape entries for %d tops; give 1 or one per top"
                               % (self.name, len(p.shape), n))
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        if nf == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0.0)]
        else:
            self.fillers = list(p.data_filler)
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, (t, s) in enumerate(zip(top, shapes)):
            t.reshape(s)
            f = self._filler_index(i)
            if not self.refill[f]:
                fill(t, self.fillers[f])

    def _filler_index(self, i: int) -> int:
        return i if len(self.fillers) > 1 else 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for i, t in enumerate(top):
            f = self._filler_index(i)
            if self.refill[f]:
                fill(t, self.fillers[f])

    def backward(self, top, propagate_down, bottom):
        pass
