"""Data, ImageData, MemoryData layers and the DataTransformer (pycaffe_norm/data/transformer.py), against hand
computation of Caffe's semantics."""
from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.data.db import write_db as write_records
from pycaffe_norm.data.transformer import DataTransformer, decode_image, resize_uint8
from pycaffe_norm.errors import NetError, PcnError
from pycaffe_norm.io.arrays import array_to_blobproto
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool
from tests.support import write_lmdb as write_db

lmdb = pytest.importorskip("lmdb")
Image = pytest.importorskip("PIL.Image")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def transformer(text: str, phase=caffe.TRAIN) -> DataTransformer:
    return DataTransformer(text_format.Parse(text, caffe_pb2.TransformationParameter()), phase)



def raw_datums(n=10, shape=(2, 3, 4)):
    """Datum i holds i * 10 + arange (mod 256) as uint8, label i."""
    size = int(np.prod(shape))
    return [caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], label=i,
                            data=((np.arange(size) + 10 * i) % 256).astype(np.uint8).tobytes()) for i in range(n)]


def raw_image(i, shape=(2, 3, 4)):
    return ((np.arange(int(np.prod(shape))) + 10 * i) % 256).reshape(shape).astype(np.float32)


def net(tmp_path, layers: str, phase=caffe.TRAIN, name="net.prototxt"):
    p = tmp_path / name
    p.write_text('name: "t"\n' + layers)
    return caffe.Net(str(p), phase)


def data_layer(source, batch=4, tops=("data", "label"), extra="", transform=""):
    return ('layer { name: "d" type: "Data" %s data_param { source: "%s" batch_size: %d backend: LMDB %s } %s }\n'
            % (" ".join('top: "%s"' % t for t in tops), source, batch, extra,
               "transform_param { %s }" % transform if transform else ""))


# --- DataTransformer ----------------------------------------------------------------------------------------
def test_transformer_test_phase_centre_crop_mean_values_and_scale():
    x = np.random.RandomState(0).randint(0, 256, (3, 2, 5, 7)).astype(np.uint8)
    t = transformer("crop_size: 3 mean_value: 10 mean_value: 20 scale: 0.5", caffe.TEST)
    out = t.transform(x)
    # centre offsets (5-3)//2 = 1 and (7-3)//2 = 2, then (x - mean[c]) * scale
    expected = (x[:, :, 1:4, 2:5].astype(np.float32) - np.float32([10, 20]).reshape(1, 2, 1, 1)) * np.float32(0.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert t.output_shape((2, 5, 7)) == (2, 3, 3)
    # one mean_value is used for every channel; no crop keeps the size
    np.testing.assert_array_equal(transformer("mean_value: 3", caffe.TEST).transform(x), x.astype(np.float32) - 3)


def test_transformer_train_random_crops_and_mirrors_use_the_same_offsets_for_the_mean_file(tmp_path):
    rs = np.random.RandomState(1)
    x = rs.randint(0, 256, (40, 2, 5, 6)).astype(np.uint8)
    mean = rs.rand(2, 5, 6).astype(np.float32) * 50
    (tmp_path / "mean.binaryproto").write_bytes(array_to_blobproto(mean[None]).SerializeToString())
    t = transformer('crop_size: 3 mirror: true scale: 0.25 mean_file: "%s"' % (tmp_path / "mean.binaryproto"))
    out = t.transform(x)
    seen = set()
    for n in range(len(x)):
        matches = []
        for h in range(3):
            for w in range(4):
                crop = (x[n, :, h:h + 3, w:w + 3].astype(np.float32) - mean[:, h:h + 3, w:w + 3]) * np.float32(0.25)
                for m in (False, True):
                    if np.array_equal(out[n], crop[:, :, ::-1] if m else crop):
                        matches.append((h, w, m))
        assert len(matches) == 1, (n, matches)
        seen.add(matches[0])
    assert len({(h, w) for h, w, _ in seen}) > 5 and {m for _, _, m in seen} == {False, True}


def test_transformer_draws_are_reproducible_and_replayable():
    x = np.random.RandomState(2).randint(0, 256, (8, 1, 6, 6)).astype(np.uint8)
    caffe.set_random_seed(5)
    a = transformer("crop_size: 4 mirror: true")
    first, second = a.transform(x), a.transform(x)
    caffe.set_random_seed(5)
    b = transformer("crop_size: 4 mirror: true")
    np.testing.assert_array_equal(b.transform(x), first)
    b.skip(1, 8, 6, 6)  # where a resumed solver puts it: after one batch
    np.testing.assert_array_equal(b.transform(x), second)
    assert not np.array_equal(first, second)


def test_transformer_errors(tmp_path):
    with pytest.raises(NetError, match="mean_file and mean_value"):
        transformer('mean_file: "m.binaryproto" mean_value: 1')
    with pytest.raises(NetError, match="mean_file not found: nope.binaryproto"):
        transformer('mean_file: "nope.binaryproto"')
    with pytest.raises(NetError, match="force_color and force_gray"):
        transformer("force_color: true force_gray: true")
    with pytest.raises(NetError, match="2 mean_value entries for 3 channels"):
        transformer("mean_value: 1 mean_value: 2").output_shape((3, 4, 4))
    with pytest.raises(NetError, match="crop_size 5 is larger"):
        transformer("crop_size: 5").output_shape((1, 4, 4))
    (tmp_path / "m.binaryproto").write_bytes(array_to_blobproto(np.zeros((1, 1, 3, 3))).SerializeToString())
    with pytest.raises(NetError, match="mean_file has shape"):
        transformer('mean_file: "%s"' % (tmp_path / "m.binaryproto")).output_shape((1, 4, 4))


def test_resize_samples_like_opencv_linear():
    img = np.arange(12, dtype=np.uint8).reshape(1, 3, 4) * 20
    up = resize_uint8(img, 6, 8)
    # half-pixel centres: output column 1 sits at input 0.25 -> 0.75 * a + 0.25 * b; edges clamp
    assert up.shape == (1, 6, 8) and up.dtype == np.uint8
    assert up[0, 0, 0] == img[0, 0, 0] and up[0, 0, 1] == round(0.75 * 0 + 0.25 * 20)
    np.testing.assert_array_equal(resize_uint8(img, 3, 4), img)


def assert_key_order_with_wrap_around(n):
    """Three batches of 4 from the 10 raw_datums scaled by 0.5: records 0..9 in key order, then 0, 1 again."""
    order = []
    for _ in range(3):
        n.forward()
        labels = n.blobs["label"].data.astype(int).tolist()
        order += labels
        np.testing.assert_array_equal(n.blobs["data"].data, np.stack([raw_image(i) * 0.5 for i in labels]))
    assert order == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


# --- Data (LMDB; LevelDB below) ---------------------------------------------------------------------------------------
def test_data_layer_raw_datums_in_key_order_wrap_around_and_scale(tmp_path):
    src = write_db(tmp_path / "db", raw_datums(10))
    n = net(tmp_path, data_layer(src, transform="scale: 0.5"))
    assert n.blobs["data"].data.shape == (4, 2, 3, 4) and n.blobs["label"].data.shape == (4,)
    assert_key_order_with_wrap_around(n)


def test_data_layer_float_data_one_top_and_rand_skip(tmp_path):
    datums = [caffe_pb2.Datum(channels=1, height=2, width=2, label=i, float_data=[i + 0.25, -i, 0.5, i * i])
              for i in range(7)]
    src = write_db(tmp_path / "db", datums)
    n = net(tmp_path, data_layer(src, batch=3, tops=("data",)).replace("backend: LMDB", ""))  # an LMDB all the same
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data.reshape(3, 4),
                                  np.float32([[i + 0.25, -i, 0.5, i * i] for i in range(3)]))
    # rand_skip: the first rng() % rand_skip records are skipped once (the net's first draw here)
    caffe.set_random_seed(11)
    skip = np.random.RandomState(11).randint(0, 5)
    assert skip > 0
    n = net(tmp_path, data_layer(src, batch=3, extra="rand_skip: 5"))
    n.forward()
    assert n.blobs["label"].data.tolist() == [(skip + k) % 7 for k in range(3)]


def png_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_data_layer_encoded_datums_decode_to_bgr_and_honour_force_gray(tmp_path):
    rs = np.random.RandomState(3)
    rgb = [rs.randint(0, 256, (4, 5, 3)).astype(np.uint8) for _ in range(3)]
    src = write_db(tmp_path / "db", [caffe_pb2.Datum(data=png_bytes(a), encoded=True, label=i)
                                     for i, a in enumerate(rgb)])
    n = net(tmp_path, data_layer(src, batch=3))
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data, np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in rgb]))
    gray = net(tmp_path, data_layer(src, batch=3, transform="force_gray: true"))
    gray.forward()
    expected = [np.asarray(Image.fromarray(a).convert("L")) for a in rgb]
    np.testing.assert_array_equal(gray.blobs["data"].data[:, 0], np.stack(expected))
    # a grey PNG decodes natively to one channel, to three with force_color
    src2 = write_db(tmp_path / "db2", [caffe_pb2.Datum(data=png_bytes(expected[0]), encoded=True)])
    assert net(tmp_path, data_layer(src2, batch=1)).blobs["data"].shape == (1, 1, 4, 5)
    assert net(tmp_path, data_layer(src2, batch=1, transform="force_color: true")).blobs["data"].shape == (1, 3, 4, 5)


def write_leveldb(path, datums, keys=None) -> str:
    """A LevelDB at ``path`` with the Datums under ``keys`` (default 00000000, 00000001, ...), written through pcn's
    shared writer (the one tools/convert_imageset.py --backend leveldb uses)."""
    pytest.importorskip("plyvel")
    keys = keys if keys is not None else ["%08d" % i for i in range(len(datums))]
    write_records(str(path), [(k.encode(), d.SerializeToString()) for k, d in zip(keys, datums)], "leveldb")
    return str(path)


WRITERS = {"lmdb": write_db, "leveldb": write_leveldb}


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_layer_restore_position_matches_continuing(tmp_path, backend):
    src = WRITERS[backend](tmp_path / "db", raw_datums(7, (1, 5, 5)))
    layers = data_layer(src, batch=3, extra="rand_skip: 4", transform="crop_size: 3 mirror: true")
    layers = layers.replace("backend: LMDB", "backend: %s" % backend.upper())
    caffe.set_random_seed(9)
    a = net(tmp_path, layers)
    for _ in range(4):
        a.forward()
    caffe.set_random_seed(9)
    b = net(tmp_path, layers)
    b.layers[0].restore_position(4)
    for _ in range(3):
        a.forward()
        b.forward()
        np.testing.assert_array_equal(a.blobs["data"].data, b.blobs["data"].data)
        np.testing.assert_array_equal(a.blobs["label"].data, b.blobs["label"].data)
    c = net(tmp_path, layers.replace("crop_size: 3 mirror: true", ""))  # far past many wrap-arounds: modulo 7
    c.layers[0].restore_position(1000)
    c.forward()
    assert c.blobs["label"].data.astype(int).tolist() == [(c.layers[0]._skip + 3000 + k) % 7 for k in range(3)]


# --- Data (LevelDB) ----------------------------------------------------------------------------------------
def test_leveldb_raw_records_in_key_order_wrap_around_and_auto_detection(tmp_path):
    keys = ["%08d" % i for i in range(10)]
    order = np.random.RandomState(0).permutation(10)   # written out of order: LevelDB reads in key order
    src = write_leveldb(tmp_path / "ldb", [raw_datums(10)[i] for i in order], [keys[i] for i in order])
    for backend in ("backend: LEVELDB", ""):   # explicit, and Caffe's default left out: detected from the folder
        n = net(tmp_path, data_layer(src, transform="scale: 0.5").replace("backend: LMDB", backend))
        assert n.blobs["data"].data.shape == (4, 2, 3, 4)
        assert_key_order_with_wrap_around(n)


def test_leveldb_encoded_and_float_records_and_a_shared_source(tmp_path):
    rs = np.random.RandomState(3)
    rgb = [rs.randint(0, 256, (4, 5, 3)).astype(np.uint8) for _ in range(3)]
    src = write_leveldb(tmp_path / "enc", [caffe_pb2.Datum(data=png_bytes(a), encoded=True, label=i)
                                           for i, a in enumerate(rgb)])
    # a train and a test net on one LevelDB in one process (LevelDB locks its folder: the handle is shared)
    train = net(tmp_path, data_layer(src, batch=3).replace("backend: LMDB", ""), name="train.prototxt")
    test = net(tmp_path, data_layer(src, batch=2).replace("backend: LMDB", ""), caffe.TEST, name="test.prototxt")
    train.forward()
    test.forward()
    np.testing.assert_array_equal(train.blobs["data"].data, np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in rgb]))
    assert test.blobs["label"].data.tolist() == [0, 1]
    floats = write_leveldb(tmp_path / "f", [caffe_pb2.Datum(channels=1, height=1, width=2, float_data=[i, -0.5])
                                            for i in range(3)])
    f = net(tmp_path, data_layer(floats, batch=2, tops=("data",)).replace("LMDB", "LEVELDB"), name="f.prototxt")
    f.forward()
    np.testing.assert_array_equal(f.blobs["data"].data.reshape(2, 2), [[0, -0.5], [1, -0.5]])


def test_backend_mismatch_and_unknown_folders_are_one_line_errors(tmp_path):
    lmdb_src = write_db(tmp_path / "mdb", raw_datums(2))
    with pytest.raises(NetError, match=r"^layer 'd' \(Data\): backend LEVELDB was asked for, but .*mdb is an LMDB "
                                       r"\(a data.mdb file\); give backend LMDB or leave the backend out$"):
        net(tmp_path, data_layer(lmdb_src).replace("LMDB", "LEVELDB"))
    fake = tmp_path / "ldb"
    fake.mkdir()
    (fake / "CURRENT").write_text("MANIFEST-000001\n")   # looks like a LevelDB: no plyvel needed to tell
    with pytest.raises(NetError, match=r"^layer 'd' \(Data\): backend LMDB was asked for, but .*ldb is a LevelDB "
                                       r"\(a CURRENT file, no data.mdb\); give backend LEVELDB"):
        net(tmp_path, data_layer(str(fake)))
    (tmp_path / "empty").mkdir()
    for backend in ("backend: LMDB", ""):
        with pytest.raises(NetError, match=r"empty is a folder with neither data.mdb \(LMDB\) nor CURRENT"):
            net(tmp_path, data_layer(str(tmp_path / "empty")).replace("backend: LMDB", backend))


def test_leveldb_without_plyvel_says_what_to_install(tmp_path, monkeypatch):
    import sys

    fake = tmp_path / "ldb"
    fake.mkdir()
    (fake / "CURRENT").write_text("MANIFEST-000001\n")
    monkeypatch.setitem(sys.modules, "plyvel", None)   # import plyvel now raises ImportError
    with pytest.raises(NetError, match=r"^layer 'd' \(Data\): reading the LevelDB .*ldb needs the 'plyvel' package: "
                                       r"pip install 'pycaffe_norm\[leveldb\]'$"):
        net(tmp_path, data_layer(str(fake)).replace("backend: LMDB", ""))


SOLVER_NET = """
layer { name: "d" type: "Data" top: "data" top: "label"
        data_param { source: "%s" batch_size: 4 backend: LMDB }
        transform_param { crop_size: 4 mirror: true scale: 0.01 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_solver_resume_with_a_data_layer_is_exact(tmp_path):
    src = write_db(tmp_path / "db", raw_datums(10, (1, 6, 6)))
    (tmp_path / "net.prototxt").write_text(SOLVER_NET % src)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 9\ndisplay: 0\n'
                      'random_seed: 3\nsnapshot_prefix: "%s"\nsnapshot_after_train: false\n'
                      % (tmp_path / "net.prototxt", tmp_path / "snap"))
    full = caffe.get_solver(str(solver))
    full.step(9)
    first = caffe.get_solver(str(solver))
    first.step(4)
    state = first.snapshot()
    resumed = caffe.get_solver(str(solver))
    resumed.restore(state)
    resumed.step(5)
    for name, blobs in full.net.params.items():
        for x, y in zip(blobs, resumed.net.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


def test_data_layer_errors(tmp_path):
    with pytest.raises(NetError, match="data source not found: no/such_lmdb"):
        net(tmp_path, data_layer("no/such_lmdb"))
    bad = write_db(tmp_path / "bad", [caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")])
    with pytest.raises(NetError, match="holds 3 values for its shape"):
        net(tmp_path, data_layer(bad))
    with pytest.raises(NetError, match="batch_size must be > 0"):
        net(tmp_path, data_layer(bad, batch=0))


# --- ImageData ---------------------------------------------------------------------------------------------
def write_images(tmp_path, n=6, size=(5, 7)):
    rs = np.random.RandomState(4)
    imgs = []
    (tmp_path / "img").mkdir()
    with open(tmp_path / "list.txt", "w") as f:
        for i in range(n):
            a = rs.randint(0, 256, size + (3,)).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "img" / ("im %d.png" % i))  # a space in the name
            f.write("im %d.png %d\n" % (i, 10 + i))
            imgs.append(a)
    return imgs


def image_layer(tmp_path, batch=3, extra="", transform=""):
    return ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "%s" '
            'root_folder: "%s/" batch_size: %d %s } %s }\n'
            % (tmp_path / "list.txt", tmp_path / "img", batch, extra,
               "transform_param { %s }" % transform if transform else ""))


def test_image_data_reads_bgr_resizes_and_reads_gray(tmp_path):
    imgs = write_images(tmp_path)
    n = net(tmp_path, image_layer(tmp_path))
    n.forward()
    assert n.blobs["label"].data.tolist() == [10, 11, 12]
    np.testing.assert_array_equal(n.blobs["data"].data, np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in imgs[:3]]))
    r = net(tmp_path, image_layer(tmp_path, extra="new_height: 8 new_width: 3 is_color: false",
                                  transform="scale: 0.5"))
    r.forward()
    gray = decode_image(str(tmp_path / "img" / "im 0.png"), False)
    assert r.blobs["data"].shape == (3, 1, 8, 3)
    np.testing.assert_array_equal(r.blobs["data"].data[0], resize_uint8(gray, 8, 3) * np.float32(0.5))
    np.testing.assert_array_equal(gray[0], np.asarray(Image.fromarray(imgs[0]).convert("L")))


def test_image_data_shuffle_is_seeded_and_resumable(tmp_path):
    write_images(tmp_path)
    layers = image_layer(tmp_path, batch=4, extra="shuffle: true")

    def labels(seed, batches=3):
        caffe.set_random_seed(seed)
        n = net(tmp_path, layers)
        out = []
        for _ in range(batches):
            n.forward()
            out += n.blobs["label"].data.astype(int).tolist()
        return out

    a = labels(1)
    assert a == labels(1) and a != labels(2)
    assert sorted(a[:6]) == list(range(10, 16)) and sorted(a[6:12]) == list(range(10, 16))
    assert a[:6] != a[6:12] or a[:6] != labels(1, 6)[12:18]  # reshuffled after each pass
    caffe.set_random_seed(1)
    b = net(tmp_path, layers)
    b.layers[0].restore_position(2)
    b.forward()
    assert b.blobs["label"].data.astype(int).tolist() == a[8:12]


def test_image_data_errors(tmp_path):
    write_images(tmp_path, n=2)
    with pytest.raises(NetError, match="new_height and new_width together"):
        net(tmp_path, image_layer(tmp_path, extra="new_height: 4"))
    (tmp_path / "list.txt").write_text("missing.png 1\n")
    with pytest.raises(NetError, match="could not load .*missing.png"):
        net(tmp_path, image_layer(tmp_path))
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "list.txt").write_text("bad.png 1\n")
    with pytest.raises(NetError, match=r"layer 'd' \(ImageData\): .*bad.png \(listed in .*list.txt\): cannot decode"):
        net(tmp_path, image_layer(tmp_path))
    (tmp_path / "list.txt").write_text("img 0.png 1\n\nno_label.png\n")
    with pytest.raises(NetError, match=r"layer 'd' \(ImageData\): .*list.txt:3: expected 'path label', got "
                                       r"'no_label.png'"):
        net(tmp_path, image_layer(tmp_path))
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(NetError, match=r"list.txt lists no images"):
        net(tmp_path, image_layer(tmp_path))


# --- MemoryData --------------------------------------------------------------------------------------------
MEMORY = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }\n')


def test_memory_data_serves_set_input_arrays_in_order(tmp_path):
    n = net(tmp_path, MEMORY)
    with pytest.raises(NetError, match="call net.set_input_arrays"):
        n.forward()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    n.set_input_arrays(data, np.arange(4))
    for k in (0, 2, 0):
        n.forward()
        np.testing.assert_array_equal(n.blobs["data"].data, data[k:k + 2])
        np.testing.assert_array_equal(n.blobs["label"].data, [k, k + 1])
    n.set_input_arrays(data[:2], np.zeros((2, 1, 1, 1)))  # pycaffe's 4-D labels; restarts at the first sample
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data, data[:2])
    with pytest.raises(NetError, match="multiple of batch_size 2"):
        n.set_input_arrays(data[:3], np.zeros(3))
    with pytest.raises(NetError, match="shape"):
        n.set_input_arrays(data.reshape(4, 1, 3, 2), np.zeros(4))
    other = net(tmp_path, data_layer(write_db(tmp_path / "db", raw_datums(4))), name="o.prototxt")
    with pytest.raises(PcnError, match="first layer is a MemoryData layer"):
        other.set_input_arrays(data, np.zeros(4))


def test_memory_data_with_only_a_data_top(tmp_path):
    """MyCaffe's label_type NONE: the data top alone; the labels given to set_input_arrays are not served."""
    n = net(tmp_path, MEMORY.replace('top: "label" ', ""))
    data = np.arange(2 * 6, dtype=np.float32).reshape(2, 1, 2, 3)
    n.set_input_arrays(data, np.zeros(2))
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data, data)
    assert "label" not in n.blobs


def test_color_order_rgb_reverses_channels_after_mean_and_scale():
    """MyCaffe's color_order RGB on Caffe's BGR data: (x - mean) * scale, then channels C-1 .. 0."""
    x = (np.arange(2 * 3 * 2 * 2) % 251).reshape(2, 3, 2, 2).astype(np.uint8)
    t = transformer("scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30 color_order: RGB", caffe.TEST)
    bgr = (x.astype(np.float32) - np.array([10, 20, 30], np.float32).reshape(1, 3, 1, 1)) * 0.5
    np.testing.assert_array_equal(t.transform(x), bgr[:, [2, 1, 0]])
    grey = x[:, :1]
    np.testing.assert_array_equal(transformer("color_order: RGB").transform(grey), grey.astype(np.float32))
    np.testing.assert_array_equal(transformer("color_order: BGR").transform(x), x.astype(np.float32))


# --- LeNet on an LMDB of bundled digits ----------------------------------------------------------------------

def test_lenet_trains_from_lmdb_of_bundled_digits(tmp_path, caplog):
    import h5py

    mnist = load_tool("make_mnist_lmdb")
    db = str(tmp_path / "train_lmdb")
    assert mnist.mnist_h5_to_lmdb(str(ROOT / "data" / "mnist" / "mnist_train.h5"), db, limit=320) == 320
    text = (ROOT / "models" / "lenet" / "lenet_train_test.prototxt").read_text()
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    for layer in param.layer[:2]:  # both HDF5Data layers become Caffe's LMDB Data layers over the same digits
        layer.type = "Data"
        layer.ClearField("hdf5_data_param")
        layer.data_param.source, layer.data_param.batch_size = db, 32
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
        layer.transform_param.scale = 0.00390625
    (tmp_path / "lenet.prototxt").write_text(text_format.MessageToString(param))
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\n'
        'power: 0.75\ndisplay: 1\nmax_iter: 30\nrandom_seed: 1701\nsnapshot_after_train: false\n'
        'snapshot_prefix: "%s"\n' % (tmp_path / "lenet.prototxt", tmp_path / "lenet"))
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.net.forward()
    with h5py.File(ROOT / "data" / "mnist" / "mnist_train.h5", "r") as f:  # identical to the HDF5 path's input
        np.testing.assert_array_equal(solver.net.blobs["data"].data, f["data"][:32])
        np.testing.assert_array_equal(solver.net.blobs["label"].data, f["label"][:32])
    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    logging.getLogger("pycaffe_norm").debug("lenet lmdb losses %s", losses)


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_database_rebuilt_at_the_same_path_is_read_afresh(tmp_path, backend):
    import shutil

    db = tmp_path / "db"
    layers = data_layer(WRITERS[backend](db, raw_datums(4)), batch=4).replace("backend: LMDB", "")
    first = net(tmp_path, layers, name="a.prototxt")
    first.forward()
    np.testing.assert_array_equal(first.blobs["label"].data, [0, 1, 2, 3])
    shutil.rmtree(db)
    rebuilt = raw_datums(8)[4:]          # labels 4..7
    WRITERS[backend](db, rebuilt, ["%08d" % i for i in range(4)]) if backend == "leveldb" else write_db(db, rebuilt)
    second = net(tmp_path, layers, name="b.prototxt")   # `first` still holds the old one
    second.forward()
    np.testing.assert_array_equal(second.blobs["label"].data, [4, 5, 6, 7])
