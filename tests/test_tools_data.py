"""tools/convert_imageset.py, tools/make_mnist_lmdb.py and tools/compute_image_mean.py: the LMDBs and LevelDBs they
write read back through the Data layer."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool

lmdb = pytest.importorskip("lmdb")
Image = pytest.importorskip("PIL.Image")

ROOT = pathlib.Path(__file__).resolve().parents[1]



def records(db):
    if (pathlib.Path(db) / "CURRENT").is_file():
        plyvel = pytest.importorskip("plyvel")
        ldb = plyvel.DB(str(db))
        out = [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in ldb]
        ldb.close()
        return out
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return out


def read_back(tmp_path, db, batch, transform="", backend="LMDB"):
    p = tmp_path / ("net_%s.prototxt" % pathlib.Path(db).name)
    p.write_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: %d '
                 'backend: %s } %s }' % (db, batch, backend, "transform_param { %s }" % transform if transform else ""))
    net = caffe.Net(str(p), caffe.TEST)
    net.forward()
    return net.blobs["data"].data.copy(), net.blobs["label"].data.astype(int).tolist()


@pytest.fixture
def images(tmp_path):
    rs = np.random.RandomState(0)
    (tmp_path / "img").mkdir()
    imgs = [rs.randint(0, 256, (6, 8, 3)).astype(np.uint8) for _ in range(4)]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / "img" / ("%d.png" % i))
    (tmp_path / "list.txt").write_text("".join("%d.png %d\n" % (i, 5 - i) for i in range(4)))
    return imgs


def test_convert_imageset_raw_gray_resized_and_encoded(tmp_path, images):
    tool = load_tool("convert_imageset")
    root, lst = str(tmp_path / "img") + "/", str(tmp_path / "list.txt")
    assert tool.main([root, lst, str(tmp_path / "raw")]) == 0
    recs = records(tmp_path / "raw")
    assert [k for k, _ in recs] == ["%08d_%d.png" % (i, i) for i in range(4)]
    assert (recs[0][1].channels, recs[0][1].height, recs[0][1].width) == (3, 6, 8)
    data, labels = read_back(tmp_path, str(tmp_path / "raw"), 4)
    np.testing.assert_array_equal(data, np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in images]))  # BGR
    assert labels == [5, 4, 3, 2]

    assert tool.main(["--gray", "--resize_height", "3", "--resize_width", "4", root, lst, str(tmp_path / "g")]) == 0
    data, _ = read_back(tmp_path, str(tmp_path / "g"), 2)
    gray = np.asarray(Image.fromarray(images[0]).convert("L"))
    assert data.shape == (2, 1, 3, 4)
    averages = gray.reshape(3, 2, 4, 2).mean(axis=(1, 3))  # halving is a 2x2 average, halves rounded up
    np.testing.assert_array_equal(data[0, 0], np.floor(averages + 0.5))

    assert tool.main(["--encoded", root, lst, str(tmp_path / "enc")]) == 0
    first = records(tmp_path / "enc")[0][1]
    assert first.encoded and first.data == (tmp_path / "img" / "0.png").read_bytes()  # the file's own bytes
    raw = read_back(tmp_path, str(tmp_path / "raw"), 4)[0]
    np.testing.assert_array_equal(read_back(tmp_path, str(tmp_path / "enc"), 4)[0], raw)


def test_convert_imageset_shuffle_and_errors(tmp_path, images, capsys):
    tool = load_tool("convert_imageset")
    root, lst = str(tmp_path / "img") + "/", str(tmp_path / "list.txt")
    assert tool.main(["--shuffle", root, lst, str(tmp_path / "s")]) == 0
    keys = [k for k, _ in records(tmp_path / "s")]
    assert sorted(k.split("_")[1] for k in keys) == ["%d.png" % i for i in range(4)]
    assert [k.split("_")[0] for k in keys] == ["%08d" % i for i in range(4)]
    assert tool.main([root, lst, str(tmp_path / "s")]) == 2
    with pytest.raises(SystemExit):
        tool.main(["--backend", "rocksdb", root, lst, str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "already exists" in err and "invalid choice: 'rocksdb'" in err


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_make_mnist_lmdb_matches_the_bundled_hdf5(tmp_path, backend):
    import h5py

    if backend == "leveldb":
        pytest.importorskip("plyvel")
    assert load_tool("make_mnist_lmdb").main(["--out", str(tmp_path), "--limit", "50", "--backend", backend]) == 0
    db = tmp_path / ("mnist_test_%s" % backend)   # create_mnist.sh's names
    recs = records(db)
    assert len(recs) == 50 and recs[0][0] == "00000000"
    d = recs[0][1]
    assert (d.channels, d.height, d.width, len(d.data)) == (1, 28, 28, 784)
    data, labels = read_back(tmp_path, str(db), 50, "scale: 0.00390625", backend.upper())
    with h5py.File(ROOT / "data" / "mnist" / "mnist_test.h5", "r") as f:
        np.testing.assert_array_equal(data, f["data"][:50])
        assert labels == f["label"][:50].astype(int).tolist()


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_a_failed_conversion_leaves_no_database(tmp_path, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    tool = load_tool("convert_imageset")

    def records_then_failure():
        yield b"00000000", b"x"
        raise tool.PcnError("bad record")

    db = tmp_path / "db"
    with pytest.raises(tool.PcnError, match="bad record"):
        tool.write_db(str(db), records_then_failure(), backend)
    assert list(tmp_path.iterdir()) == []  # neither the database nor a temporary folder: a rerun can start afresh
    assert tool.write_db(str(db), iter([(b"k", b"v")]), backend, commit_every=1) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert (db / ("CURRENT" if backend == "leveldb" else "data.mdb")).is_file()


def test_convert_imageset_and_compute_image_mean_with_leveldb(tmp_path, images, capsys):
    pytest.importorskip("plyvel")
    tool = load_tool("convert_imageset")
    root, lst = str(tmp_path / "img") + "/", str(tmp_path / "list.txt")
    assert tool.main(["--backend", "LevelDB", root, lst, str(tmp_path / "ldb")]) == 0
    assert (tmp_path / "ldb" / "CURRENT").is_file() and not (tmp_path / "ldb" / "data.mdb").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []   # renamed into place
    assert [k for k, _ in records(tmp_path / "ldb")] == ["%08d_%d.png" % (i, i) for i in range(4)]
    data, labels = read_back(tmp_path, str(tmp_path / "ldb"), 4, backend="LEVELDB")
    np.testing.assert_array_equal(data, np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in images]))
    assert labels == [5, 4, 3, 2]
    assert tool.main(["--backend", "leveldb", root, lst, str(tmp_path / "ldb")]) == 2   # exists: refused
    assert "already exists" in capsys.readouterr().err

    mean_tool = load_tool("compute_image_mean")
    bgr = np.stack([a[:, :, ::-1].transpose(2, 0, 1) for a in images]).astype(np.float32)
    for args in (["--backend", "leveldb"], []):   # explicit, and detected from the folder
        out = tmp_path / ("mean%d.binaryproto" % len(args))
        assert mean_tool.main(args + [str(tmp_path / "ldb"), str(out)]) == 0
        blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
        np.testing.assert_allclose(np.asarray(blob.data).reshape(3, 6, 8), bgr.mean(axis=0), rtol=1e-6)
    assert mean_tool.main(["--backend", "lmdb", str(tmp_path / "ldb")]) == 2
    assert "backend LMDB was asked for, but %s is a LevelDB" % (tmp_path / "ldb") in capsys.readouterr().err


def test_convert_imageset_skips_unreadable_images_as_caffe(tmp_path, images, capsys):
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "list.txt").write_text("0.png 5\nbad.png 9\nmissing.png 8\n1.png 4\n")
    tool = load_tool("convert_imageset")
    assert tool.main([str(tmp_path / "img") + "/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    assert [k for k, _ in records(tmp_path / "db")] == ["00000000_0.png", "00000003_1.png"]  # keys keep line ids
    err = capsys.readouterr().err
    assert "Could not open or find file %s" % (tmp_path / "img" / "bad.png") in err and "missing.png" in err
