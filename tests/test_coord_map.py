"""pycaffe_norm.coord_map (pycaffe's caffe.coord_map): maps through convolution, pooling, deconvolution, element-wise
and crop layers, composition, the crop helper, and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.coord_map import (
    IDENTITY,
    CropError,
    UnconnectedTopsError,
    compose,
    coord_map_from_to,
    crop,
    inverse,
)
from pycaffe_norm.errors import PcnError
from pycaffe_norm.net_spec import layers as L
from pycaffe_norm.net_spec import params as P


def fcn(kernel=3, stride=1, pad=0, pool=2, up=2, up_pad=0, size=64):
    """data -> conv -> max pool -> deconv (kernel twice its stride), the upsampling path of an FCN."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, size, size]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=kernel, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    up_kernel = [2 * s for s in up] if isinstance(up, list) else 2 * up
    n.up = L.Deconvolution(n.pool, num_output=2, kernel_size=up_kernel, stride=up, pad=up_pad)
    return n


def test_single_layer_maps():
    # conv k5 s2 p1: output j is centred on input 2j - 1 + 2 = 2j + 1
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 9, 9]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=5, stride=2, pad=1)
    axis, scale, shift = coord_map_from_to(n.conv, n.data)
    assert axis == 1 and scale == 2 and shift == 1
    # and input i sits at output (i - 1) / 2
    axis, scale, shift = coord_map_from_to(n.data, n.conv)
    assert axis == 1 and scale == 0.5 and shift == -0.5
    # dilation 2 makes a 3-tap kernel span 5 inputs: output j is centred on input j + 2
    n.dil = L.Convolution(n.data, num_output=1, kernel_size=3, dilation=2)
    assert coord_map_from_to(n.dil, n.data)[1:] == (1, 2)


def test_two_fold_down_and_up_is_the_identity_and_four_fold_shifts_by_one():
    n = fcn()
    assert coord_map_from_to(n.up, n.data) == (1, 1, 0)
    n = fcn(pool=4, up=4)
    axis, scale, shift = coord_map_from_to(n.up, n.data)
    assert (axis, scale, shift) == (1, 1, -1)


def test_pass_through_layers_and_1x1_convolution_keep_the_map():
    n = fcn()
    base = coord_map_from_to(n.up, n.data)
    n.relu = L.ReLU(n.up)
    n.bn = L.BatchNorm(n.relu)
    n.one = L.Convolution(n.bn, num_output=2, kernel_size=1)
    for top in (n.relu, n.bn, n.one):
        assert coord_map_from_to(top, n.data) == base


@pytest.mark.parametrize("pad,up_pad,delta", [(3, 0, -3), (0, 3, 3), (3, 3, 0)])
def test_padding_shifts_the_map(pad, up_pad, delta):
    n = fcn()
    base = coord_map_from_to(n.up, n.data)
    n = fcn(pad=pad, up_pad=up_pad)
    axis, scale, shift = coord_map_from_to(n.up, n.data)
    assert scale == base[1] and shift == base[2] + delta


def test_both_bottoms_of_a_two_input_layer_map_alike():
    n = fcn()
    n.aux = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.ca, n.cb = L.Convolution(n.data, n.aux, ntop=2, num_output=2, kernel_size=5, stride=2)
    assert coord_map_from_to(n.ca, n.data) == coord_map_from_to(n.cb, n.aux)


def test_rectangular_kernels_map_each_axis_on_its_own():
    square3, square5 = fcn(kernel=3, stride=1, pad=0), fcn(kernel=5, stride=2, pad=10)
    rect = fcn(kernel=[3, 5], stride=[1, 2], pad=[0, 10])
    _, a3, b3 = coord_map_from_to(square3.up, square3.data)
    _, a5, b5 = coord_map_from_to(square5.up, square5.data)
    _, a, b = coord_map_from_to(rect.up, rect.data)
    assert list(a) == [a3[0], a5[0]] and list(b) == [b3[0], b5[0]]


def test_three_spatial_axes():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 12, 12, 12]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=[3, 3, 3], pad=[0, 1, 2])
    n.up = L.Deconvolution(n.conv, num_output=1, kernel_size=1)
    axis, scale, shift = coord_map_from_to(n.up, n.data)
    assert axis == 1 and np.all(scale == 1) and list(shift) == [1, 0, -1]


def test_crop_offsets_add_up():
    n = fcn()
    _, _, shift = coord_map_from_to(n.up, n.data)
    n.cropped = L.Crop(n.up, n.data, axis=2, offset=4)
    axis, scale, crop_shift = coord_map_from_to(n.cropped, n.data)
    assert axis == 1 and scale == 1 and crop_shift == shift + 4


def test_crop_helper_builds_a_crop_that_aligns_the_tops():
    n = fcn(pad=0, up_pad=0, pool=4, up=4, size=40)  # shift -1: the crop offset is 1 on every spatial axis
    n.aligned = crop(n.up, n.data)
    proto = n.to_proto()
    layer = [lay for lay in proto.layer if lay.type == "Crop"][0]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [1]
    net = caffe.Net(proto, caffe.TEST)
    assert net.blobs["aligned"].data.shape[2:] == net.blobs["data"].data.shape[2:]


def test_compose_and_inverse():
    m = (1, np.array([0.5]), np.array([-1.5]))
    axis, scale, shift = compose(m, inverse(m))
    assert axis == 1 and scale == 1 and shift == 0
    assert compose(IDENTITY, m)[0] == 1


def test_errors():
    n = fcn()
    n.ip = L.InnerProduct(n.up, num_output=3)
    with pytest.raises(UnconnectedTopsError, match="connected by spatial layers") as info:
        coord_map_from_to(n.ip, n.data)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, PcnError)
    mismatched = fcn(pool=3, up=2)
    with pytest.raises(CropError, match="scale mismatch"):  # 3-fold down, 2-fold up
        crop(mismatched.up, mismatched.data)
    bigger = fcn(up_pad=10)  # the upsampled top is smaller than the data
    with pytest.raises(CropError, match="negative offset") as info:
        crop(bigger.up, bigger.data)
    assert isinstance(info.value, AssertionError)
    odd = fcn(kernel=4, pad=1)  # shift -0.5
    with pytest.raises(CropError, match="non-integer"):
        crop(odd.up, odd.data)
