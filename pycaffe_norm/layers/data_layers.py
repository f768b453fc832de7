"""Layers that bring data into a net."""
from __future__ import annotations

import logging
import os
import weakref
from typing import List

import numpy as np

from .. import distributed
from ..data.db import open_reader
from ..data.paths import candidates, resolve_path
from ..data.transformer import DataTransformer, decode_image, read_image, read_image_list
from ..errors import NetError, PcnError
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
        self._shard = _shard(self)
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

    def _damaged(self, path: str, e: Exception) -> NetError:
        # h5py reports a corrupt file's metadata as RuntimeError, KeyError, ValueError... when it is read
        return NetError("layer %r (HDF5Data): cannot read HDF5 file %s (damaged?): %s"
                        % (self.name, path, " ".join(str(e).split()) or type(e).__name__))

    def _load(self, file_index: int) -> None:
        """Reads every top's dataset of file ``file_index`` into memory, in the top blobs' dtype."""
        try:
            self._read(file_index)
        except (RuntimeError, KeyError, ValueError, TypeError, OSError) as e:
            raise self._damaged(self.files[file_index], e) from None

    def _read(self, file_index: int) -> None:
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
            try:
                with self._open(self.files[file_index]) as f:
                    ds = f.get(self.top_names[0])
                    count = int(ds.shape[0]) if getattr(ds, "shape", ()) else None
            except (RuntimeError, KeyError, ValueError, TypeError, OSError) as e:
                raise self._damaged(self.files[file_index], e) from None
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
        self._offset = 0    # rows served or skipped since setup: the position in the stream all ranks share

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
        remaining = int(batches) * self.batch_size * (self._shard[1] if self._shard else 1)
        self._offset = remaining
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
        if self._shard:
            self._forward_share(top)
            return
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

    def _forward_share(self, top) -> None:
        """This rank's rows: those at stream positions ``rank``, ``rank + count``, ... (Caffe's Skip())."""
        rank, count = self._shard
        for i in range(self.batch_size):
            while self._offset % count != rank:
                self._next_row()
            row = int(self._perm[self._row])
            for t, arr in zip(top, self._arrays):
                _copy_to_top(t.data[i:i + 1], arr[row:row + 1], t.xp)
            self._next_row()

    def _next_row(self) -> None:
        self._row += 1
        self._offset += 1
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


def _copy_to_top(t, arr: np.ndarray, xp=None) -> None:
    """Copies ``arr`` into the top blob ``t`` (or, with ``xp`` given, into the array ``t`` of that module)."""
    if xp is not None:
        t[...] = arr if xp is np else xp.asarray(arr)
    elif t.xp is np:
        t.data[...] = arr
    else:
        t.data[...] = t.xp.asarray(arr)


def _shard(layer: Layer):
    """(rank, count) when ``layer`` reads one share of its records (a TRAIN net of several solvers), else None."""
    if not distributed.sharded(layer.phase):
        return None
    rank, count = distributed.solver_rank(), distributed.solver_count()
    log.info("layer %r: solver %d of %d reads records %d, %d, ... of every %d", layer.name, rank, count, rank,
             rank + count, count)
    return rank, count


class _TransformingDataLayer(Layer):
    """What Caffe's BaseDataLayer adds: a DataTransformer built from ``transform_param`` before the layer's own
    setup (so its random seed is drawn first, as in Caffe), and the batch size check."""

    exact_num_bottom = 0

    def _setup_transformer(self, batch_size: int, field: str) -> None:
        if batch_size <= 0:
            raise NetError("layer %r (%s): %s.batch_size must be > 0, got %d"
                           % (self.name, self.type, field, batch_size))
        self.batch_size = int(batch_size)
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                           "layer %r (%s)" % (self.name, self.type))

    def reshape(self, bottom, top):
        pass  # tops are shaped once in setup

    def backward(self, top, propagate_down, bottom):
        pass


@register("Data")
class DataLayer(_TransformingDataLayer):
    """Batches of Datum records read in key order from an LMDB or a LevelDB (Caffe's DataLayer), through
    ``transform_param``.

    Raw Datums (uint8 ``data`` or ``float_data``) and encoded ones (``encoded: true``, JPEG/PNG bytes decoded with
    Pillow into OpenCV's BGR order) are read; after the last record the cursor restarts at the first. With
    ``rand_skip`` the first ``rng() % rand_skip`` records are skipped once at setup. Top 1, when present, holds the
    labels. ``prefetch`` is accepted; pcn reads synchronously, which changes no value. Caffe's schema makes
    LEVELDB the default ``backend``; without a ``backend`` line pcn reads the source as what it is (a folder with
    ``data.mdb`` as LMDB, one with ``CURRENT`` as LevelDB); an explicit ``backend`` must match the source.
    LevelDB needs the ``plyvel`` package (``pip install 'pycaffe_norm[leveldb]'``).
    """

    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.data_param
        backend = None
        if p.HasField("backend"):
            backend = "leveldb" if p.backend == caffe_pb2.DataParameter.LEVELDB else "lmdb"
        self._setup_transformer(p.batch_size, "data_param")
        self.source = self._resolve_source(p.source)
        try:
            self._reader = open_reader(self.source, backend)
        except PcnError as e:
            raise NetError("layer %r (Data): %s" % (self.name, e)) from None
        self._skip = int(rng().randint(0, p.rand_skip)) if p.rand_skip else 0
        if self._skip:
            log.info("Skipping first %d data points.", self._skip)
        self._shard = _shard(self)
        self._offset = 0    # records read or skipped since the skip: the position in the stream all ranks share
        self._seek(self._skip)
        first = self._datum_array(*self._peek())
        self._item_shape = first.shape
        top[0].reshape((self.batch_size,) + self.transformer.output_shape(first.shape))
        log.info("output data size: %s", ",".join(str(d) for d in top[0].shape))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    # --- the database -------------------------------------------------------------------------------------
    def _resolve_source(self, source: str) -> str:
        if not source:
            raise NetError("layer %r (Data): data_param.source is empty; give the LMDB or LevelDB folder" % self.name)
        for c in candidates(source):
            if os.path.isdir(c) or os.path.isfile(c):
                return c
        raise NetError("layer %r (Data): data source not found: %s (working directory: %s)"
                       % (self.name, source, os.getcwd()))

    def _seek(self, index: int) -> None:
        """Puts the reader on record ``index`` (mod the record count), walking keys without decoding values."""
        self._reader.seek(index)

    def _peek(self):
        return self._reader.key(), self._reader.value()

    def _next(self) -> None:
        self._offset += 1
        if self._reader.next():
            log.debug("layer %r: Restarting data prefetching from start.", self.name)

    def _datum_array(self, key: bytes, value: bytes, datum=None) -> np.ndarray:
        """One record as (C, H, W): uint8 for ``data`` and encoded images, float32 for ``float_data``."""
        datum = datum if datum is not None else caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception:
            raise NetError("layer %r (Data): record %r in %s is not a Datum" % (self.name, key, self.source)) from None
        where = "layer %r (Data): record %r in %s" % (self.name, key, self.source)
        if datum.encoded:
            t = self.transformer
            color = True if t.force_color else False if t.force_gray else None
            return decode_image(datum.data, color, what=where)
        shape = (datum.channels, datum.height, datum.width)
        size = int(np.prod(shape))
        if len(datum.data):
            arr = np.frombuffer(datum.data, dtype=np.uint8)
        else:
            arr = np.asarray(datum.float_data, dtype=np.float32)
        if arr.size != size or size == 0:
            raise NetError("%s holds %d values for its shape %s (channels, height, width)" % (where, arr.size, shape))
        return arr.reshape(shape)

    # --- position -----------------------------------------------------------------------------------------
    def restore_position(self, batches: int) -> None:
        """Puts the layer where it would be after ``batches`` forward passes from setup (used by Solver.restore)."""
        self._offset = int(batches) * self.batch_size * (self._shard[1] if self._shard else 1)
        self._seek(self._skip + self._offset)
        self.transformer.skip(batches, self.batch_size, *self._item_shape[1:])

    # --- verbs --------------------------------------------------------------------------------------------
    def forward(self, bottom, top):
        datum = caffe_pb2.Datum()
        items, labels = [], np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            while self._shard and self._offset % self._shard[1] != self._shard[0]:
                self._next()    # another rank's record (Caffe's DataLayer::Skip)
            key, value = self._peek()
            arr = self._datum_array(key, value, datum)
            if arr.shape != self._item_shape:
                raise self.shape_error("record %r in %s" % (key, self.source), arr.shape, self._item_shape)
            items.append(arr)
            labels[i] = datum.label
            self._next()
        _copy_to_top(top[0], self.transformer.transform(np.stack(items)))
        if len(top) > 1:
            _copy_to_top(top[1], labels)


@register("ImageData")
class ImageDataLayer(_TransformingDataLayer):
    """Images listed in ``image_data_param.source`` (lines ``path label``), decoded with Pillow (Caffe's
    ImageDataLayer).

    Paths are ``root_folder + path``, as Caffe concatenates them (a relative result is also looked for next to the
    list file). Colour images come in OpenCV's BGR order; ``is_color: false`` reads grey. ``new_height`` and
    ``new_width`` resize bilinearly (OpenCV's INTER_LINEAR sampling). With ``shuffle`` the list is shuffled at
    setup and after every pass, from a generator seeded once from :func:`pycaffe_norm.random.rng`; ``rand_skip``
    skips ``rng() % rand_skip`` lines once at setup.
    """

    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        if (p.new_height > 0) != (p.new_width > 0):
            raise NetError("layer %r (ImageData): set new_height and new_width together (got %d and %d)"
                           % (self.name, p.new_height, p.new_width))
        self._setup_transformer(p.batch_size, "image_data_param")
        self.new_size = (int(p.new_height), int(p.new_width))
        self.is_color = bool(p.is_color)
        self.root_folder = p.root_folder
        self.shuffle = bool(p.shuffle)
        if not p.source:
            raise NetError("layer %r (ImageData): image_data_param.source is empty; give a list file of "
                           "'path label' lines" % self.name)
        self.source = resolve_path(p.source)
        if self.source is None:
            raise NetError("layer %r (ImageData): source list file not found: %s (working directory: %s)"
                           % (self.name, p.source, os.getcwd()))
        self.lines = self._read_list(self.source)
        log.info("A total of %d images.", len(self.lines))
        self._seed = int(rng().randint(0, 2**31 - 1)) if self.shuffle else 0
        self._skip = 0
        if p.rand_skip:
            self._skip = int(rng().randint(0, p.rand_skip))
            if self._skip >= len(self.lines):
                raise NetError("layer %r (ImageData): rand_skip drew %d but %s lists only %d images"
                               % (self.name, self._skip, self.source, len(self.lines)))
            log.info("Skipping first %d data points.", self._skip)
        self._shard = _shard(self)
        self._reset()
        first = self._load(self._order[self._pos])
        self._item_shape = first.shape
        top[0].reshape((self.batch_size,) + self.transformer.output_shape(first.shape))
        top[1].reshape((self.batch_size,))

    def _read_list(self, source: str):
        lines = read_image_list(source, "layer %r (ImageData): " % self.name)
        if not lines:
            raise NetError("layer %r (ImageData): %s lists no images" % (self.name, source))
        return lines

    def _load(self, index: int) -> np.ndarray:
        name = self.root_folder + self.lines[index][0]
        path = resolve_path(name, [os.path.dirname(os.path.abspath(self.source))])
        if path is None:
            raise NetError("layer %r (ImageData): could not load %s (listed in %s): file not found"
                           % (self.name, name, self.source))
        where = "layer %r (ImageData): %s (listed in %s)" % (self.name, name, self.source)
        return read_image(path, self.new_size[0], self.new_size[1], self.is_color, what=where)

    def _reset(self) -> None:
        self._rng = np.random.RandomState(self._seed)
        self._order = np.arange(len(self.lines))
        if self.shuffle:
            self._rng.shuffle(self._order)
        self._pos = self._skip
        self._offset = 0    # lines read or skipped since the skip: the position in the stream all ranks share

    def _advance(self) -> None:
        self._offset += 1
        self._pos += 1
        if self._pos >= len(self.lines):
            log.debug("layer %r: Restarting data prefetching from start.", self.name)
            self._pos = 0
            if self.shuffle:
                self._rng.shuffle(self._order)

    def restore_position(self, batches: int) -> None:
        """Puts the layer where it would be after ``batches`` forward passes from setup (used by Solver.restore)."""
        self._reset()
        n = len(self.lines)
        total = remaining = int(batches) * self.batch_size * (self._shard[1] if self._shard else 1)
        while remaining > 0:  # whole passes at a time: only the reshuffles need replaying
            take = min(remaining, n - self._pos)
            self._pos += take - 1
            remaining -= take
            self._advance()
        self._offset = total
        self.transformer.skip(batches, self.batch_size, *self._item_shape[1:])

    def forward(self, bottom, top):
        items, labels = [], np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            while self._shard and self._offset % self._shard[1] != self._shard[0]:
                self._advance()    # another rank's image
            index = int(self._order[self._pos])
            img = self._load(index)
            if img.shape != self._item_shape:
                raise self.shape_error("image %s" % (self.root_folder + self.lines[index][0]), img.shape,
                                       self._item_shape)
            items.append(img)
            labels[i] = self.lines[index][1]
            self._advance()
        _copy_to_top(top[0], self.transformer.transform(np.stack(items)))
        _copy_to_top(top[1], labels)


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Batches from arrays given with :meth:`set_input_arrays` (pycaffe's ``net.set_input_arrays``), in order and
    wrapping around (Caffe's MemoryDataLayer). Like Caffe's ``Reset``, the arrays are not transformed."""

    exact_num_bottom = 0
    min_top = 1   # MyCaffe's label_type NONE: the data top only
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        dims = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(dims) <= 0:
            raise NetError("layer %r (MemoryData): memory_data_param batch_size, channels, height and width must "
                           "all be > 0, got %s" % (self.name, dims))
        self.batch_size, self.item_shape = dims[0], dims[1:]
        top[0].reshape(dims)
        if len(top) > 1:
            top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self._pos = 0

    def set_input_arrays(self, data, labels) -> None:
        """Keeps float32 copies of ``data`` (N, C, H, W) and ``labels`` (N,) or (N, 1, 1, 1); N a multiple of
        the batch size. Serving restarts at the first sample."""
        data, labels = np.asarray(data), np.asarray(labels)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise self.shape_error("set_input_arrays data", data.shape, ("N",) + self.item_shape)
        if labels.ndim == 4 and labels.shape[1:] == (1, 1, 1):
            labels = labels.reshape(-1)
        if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
            raise self.shape_error("set_input_arrays labels", labels.shape, (data.shape[0],))
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise NetError("layer %r (MemoryData): set_input_arrays got %d samples; the number must be a positive "
                           "multiple of batch_size %d" % (self.name, data.shape[0], self.batch_size))
        if self.layer_param.HasField("transform_param"):
            log.warning("layer %r: MemoryData does not transform array data on set_input_arrays", self.name)
        self._data = np.ascontiguousarray(data, dtype=np.float32)
        self._labels = np.ascontiguousarray(labels, dtype=np.float32)
        self._pos = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self._data is None:
            raise NetError("layer %r (MemoryData): no data; call net.set_input_arrays(data, labels) first" % self.name)
        b = slice(self._pos, self._pos + self.batch_size)
        _copy_to_top(top[0], self._data[b])
        if len(top) > 1:
            _copy_to_top(top[1], self._labels[b])
        self._pos = (self._pos + self.batch_size) % self._data.shape[0]

    def backward(self, top, propagate_down, bottom):
        pass


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes bottom 0 and bottom 1 into the HDF5 file ``hdf5_output_param.file_name`` as the datasets ``data``
    and ``label`` (Caffe's HDF5OutputLayer).

    As in Caffe the file is created (an existing one truncated) at setup, stays open while the layer lives and is
    closed with it (or by :meth:`close`); each blob is stored with Caffe's 4-axis legacy shape (num, channels,
    height, width) in the blob's dtype. Caffe writes the datasets once and fails on a second forward pass; pcn
    appends each pass's rows to them and flushes the file, so it can be read while the net runs. No gradient.
    """

    exact_num_bottom = 2
    exact_num_top = 0
    dataset_names = ("data", "label")

    def setup(self, bottom, top):
        import h5py

        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise NetError("layer %r (HDF5Output): hdf5_output_param.file_name is empty; give the .h5 file to "
                           "write" % self.name)
        try:
            self._file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise NetError("layer %r (HDF5Output): failed to create HDF5 file %s: %s (is it open elsewhere, e.g. "
                           "by another HDF5Output layer?)" % (self.name, self.file_name, e)) from None
        self._closer = weakref.finalize(self, self._file.close)
        self.rows = 0

    def close(self) -> None:
        """Closes the file (Caffe closes it in the layer's destructor); later forward passes are errors."""
        self._closer()

    def _legacy_shape(self, i: int, blob) -> tuple:
        shape = tuple(blob.shape)
        if len(shape) > 4:
            raise NetError("layer %r (HDF5Output): bottom %r has %d axes %s; HDF5Output writes blobs of at most 4 "
                           "axes (Caffe's num, channels, height, width)"
                           % (self.name, self.layer_param.bottom[i], len(shape), shape))
        return shape + (1,) * (4 - len(shape))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        from ..backend import to_numpy

        if not self._closer.alive:
            raise NetError("layer %r (HDF5Output): %s was closed; build the net again to write more"
                           % (self.name, self.file_name))
        shapes = [self._legacy_shape(i, b) for i, b in enumerate(bottom)]
        if shapes[0][0] != shapes[1][0]:
            raise NetError("layer %r (HDF5Output): data and label bottoms must have the same batch size, got %d "
                           "and %d" % (self.name, shapes[0][0], shapes[1][0]))
        for i, (name, shape) in enumerate(zip(self.dataset_names, shapes)):
            ds = self._file.get(name)
            if ds is not None and ds.shape[1:] != shape[1:]:  # checked before anything is written
                raise self.shape_error("bottom %r (one row of dataset %r)" % (self.layer_param.bottom[i], name),
                                       shape[1:], ds.shape[1:])
        log.info("Saving HDF5 file %s", self.file_name)
        for name, b, shape in zip(self.dataset_names, bottom, shapes):
            arr = to_numpy(b.data).reshape(shape)
            ds = self._file.get(name)
            if ds is None:
                ds = self._file.create_dataset(name, shape=(0,) + shape[1:], maxshape=(None,) + shape[1:],
                                               dtype=arr.dtype, chunks=True)
            n = ds.shape[0]
            ds.resize(n + shape[0], axis=0)
            ds[n:] = arr
        self._file.flush()
        self.rows += shapes[0][0]
        log.info("Successfully saved %d rows", shapes[0][0])

    def backward(self, top, propagate_down, bottom):
        pass  # Caffe's HDF5Output has no gradient and ignores backward requests
