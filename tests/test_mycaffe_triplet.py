"""A MyCaffe-style triplet net (DataSequence -> shared towers -> TripletLoss, Decode -> Silence / AccuracyDecode,
Knn -> Accuracy), written for pcn, trained by the solver: the layers' fixed parameter blobs stay out of the
updates and the test net decodes with the centroids the training net accumulated."""
from __future__ import annotations

import numpy as np

import pycaffe_norm as caffe

TOWER = """
layer {{ name: "ip{s}" type: "InnerProduct" bottom: "{b}" top: "f{s}" param {{ name: "w" }} param {{ name: "b" }}
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
"""

NET = """
name: "TinyTriplet"
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{train}" batch_size: 12 }} }}
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{test}" batch_size: 12 }} }}
layer {{ name: "seq" type: "DataSequence" bottom: "data" bottom: "label" top: "a" top: "p" top: "n" top: "lbl"
  data_sequence_param {{ cache_size: 8 k: 1 label_count: 3 balance_matches: false }} }}
{towers}
layer {{ name: "decode" type: "Decode" bottom: "fa" bottom: "lbl" top: "decode"
  decode_param {{ target: CENTROID cache_size: 2 pregen_label_count: 3 }} }}
layer {{ name: "silence" type: "Silence" bottom: "decode" include {{ phase: TRAIN }} }}
layer {{ name: "knn" type: "Knn" bottom: "fa" bottom: "label" top: "knn"
  knn_param {{ num_output: 3 k: 5 max_stored_batches: 2 }} }}
layer {{ name: "silence_knn" type: "Silence" bottom: "knn" include {{ phase: TRAIN }} }}
layer {{ name: "loss" type: "TripletLoss" bottom: "fa" bottom: "fp" bottom: "fn" bottom: "lbl" top: "loss"
  triplet_loss_param {{ alpha: 1 }} }}
layer {{ name: "acc" type: "AccuracyDecode" bottom: "decode" bottom: "lbl" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "knn_acc" type: "Accuracy" bottom: "knn" bottom: "label" top: "knn_accuracy" include {{ phase: TEST }} }}
"""


def write_clusters(path, n, seed):
    import h5py

    rng = np.random.RandomState(seed)
    labels = np.arange(n) % 3
    centres = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    data = centres[labels] + 0.3 * rng.randn(n, 4)
    with h5py.File(path, "w") as f:
        f["data"] = data.astype(np.float32)
        f["label"] = labels.astype(np.float32)


def test_triplet_net_trains_and_the_test_net_decodes_with_shared_centroids(tmp_path):
    for name, seed in (("train", 1), ("test", 2)):
        write_clusters(tmp_path / ("%s.h5" % name), 36, seed)
        (tmp_path / ("%s.txt" % name)).write_text(str(tmp_path / ("%s.h5" % name)) + "\n")
    towers = "".join(TOWER.format(s=s, b=b) for s, b in (("a", "a"), ("p", "p"), ("n", "n")))
    net_text = NET.format(train=tmp_path / "train.txt", test=tmp_path / "test.txt", towers=towers)
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.05 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed" '
        'max_iter: 60 test_iter: 3 test_interval: 1000 display: 0 random_seed: 3 snapshot_prefix: "%s"'
        % (tmp_path / "snap"))
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    train = solver.net
    decode = train.layer_dict["decode"]
    assert all(lr == 0 for blob, lr in zip(train.learnable_params, train.params_lr)
               if any(blob is b for b in decode.blobs))
    first = train.forward_loss()
    solver.step(60)
    last = np.mean([train.forward_loss() for _ in range(3)])
    assert last < first
    # Decode's state: counts of every anchor seen, centroids the mean of recent anchor embeddings.
    assert decode.blobs[2].data.sum() == 12 * (60 + 1 + 3)
    assert decode.blobs[1].data.reshape(-1).tolist() == [1.0, 1.0, 1.0]
    test_net = solver.test_nets[0]
    np.testing.assert_array_equal(test_net.layer_dict["decode"].blobs[0].data, decode.blobs[0].data)
    scores = solver.test(0)
    assert scores["accuracy"] > 0.9
    assert scores["knn_accuracy"] > 0.9
