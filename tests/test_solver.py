"""Solver: learning-rate policies, update order, test nets, logging, snapshots and exact resumption."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.errors import PcnError
from pycaffe_norm.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 4 } shape { dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""


def write_solver(tmp_path, extra: str = "", net: str = NET) -> str:
    """A solver prototxt: the base settings below, each overridden by a field of the same name in ``extra``."""
    (tmp_path / "net.prototxt").write_text(net)
    base = ('net: "%s"\nbase_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.001\nlr_policy: "fixed"\nmax_iter: 20\n'
            'display: 0\nrandom_seed: 3\nsnapshot_prefix: "%s"\nsnapshot_after_train: false\n'
            % (tmp_path / "net.prototxt", tmp_path / "snap"))
    overridden = {token.rstrip(":") for token in extra.split() if token.endswith(":")}
    kept = [line for line in base.splitlines() if line.split(":")[0] not in overridden]
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(kept) + "\n" + extra)
    return str(path)


def feed(net, it: int) -> None:
    rng = np.random.RandomState(100 + it)
    net.blobs["data"].data[...] = rng.randn(8, 4)
    net.blobs["label"].data[...] = rng.randint(0, 3, 8)


def run(solver, start: int, stop: int) -> None:
    for it in range(start, stop):
        feed(solver.net, it)
        solver.step(1)


@pytest.mark.parametrize("policy, extra, expected", [
    ("fixed", "", lambda it: 0.1),
    ("step", "gamma: 0.5 stepsize: 3", lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", "gamma: 0.9", lambda it: 0.1 * 0.9 ** it),
    ("inv", "gamma: 0.1 power: 0.75", lambda it: 0.1 * (1 + 0.1 * it) ** -0.75),
    ("multistep", "gamma: 0.5 stepvalue: 2 stepvalue: 5", lambda it: 0.1 * 0.5 ** ((it >= 2) + (it >= 5))),
    ("poly", "power: 2", lambda it: 0.1 * (1 - it / 20.0) ** 2),
    ("sigmoid", "gamma: -0.5 stepsize: 4", lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
])
def test_learning_rate_policies(tmp_path, policy, extra, expected):
    solver = caffe.get_solver(write_solver(tmp_path, 'lr_policy: "%s"\n%s\n' % (policy, extra)))
    for it in range(8):
        assert solver.lr == pytest.approx(expected(it), rel=1e-6), (policy, it)
        feed(solver.net, it)
        solver.step(1)
    assert solver.iter == 8


def test_sgd_update_follows_caffe_order(tmp_path):
    """One step by hand: L2 decay (times decay_mult), momentum history, lr_mult."""
    solver = caffe.get_solver(write_solver(tmp_path))
    net = solver.net
    feed(net, 0)
    before = [p.data.copy() for p in net.learnable_params]
    net.clear_param_diffs()
    net.forward_backward()
    grads = [p.diff.copy() for p in net.learnable_params]
    for p, b in zip(net.learnable_params, before):
        p.diff[...] = 0
        p.data[...] = b
    solver.step(1)
    for k, (p, b, g) in enumerate(zip(net.learnable_params, before, grads)):
        decay = 0.001 * net.params_weight_decay[k]
        expected = b - 0.1 * net.params_lr[k] * (g + decay * b)
        np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-7)


def test_sgd_blocked_update_gives_the_three_steps_bits(tmp_path, monkeypatch):
    """SGD's fused update in blocks on the thread pool (forced here with tiny blocks and three threads) gives the
    bits of regularize + compute_update_value + data -= diff, over several steps with momentum history."""
    from pycaffe_norm import parallel
    from pycaffe_norm.solvers import sgd_solvers

    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(sgd_solvers, "_UPDATE_BLOCK", 5)
    monkeypatch.setenv("PCN_THREADS", "3")
    weights = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(sgd_solvers.SGDSolver, "update_in_blocks", lambda self, i, rate: False)
        solver = caffe.get_solver(write_solver(tmp_path, "momentum: 0.9\nweight_decay: 0.01\n"))
        run(solver, 0, 4)
        weights.append([p.data.copy() for p in solver.net.learnable_params]
                       + [h.data.copy() for h in solver.history])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_l1_regularization_and_clipping(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path, 'regularization_type: "L1"\nclip_gradients: 0.01\n'))
    net = solver.net
    feed(net, 0)
    before = [p.data.copy() for p in net.learnable_params]
    net.clear_param_diffs()
    net.forward_backward()
    grads = [p.diff.astype(np.float64) for p in net.learnable_params]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert norm > 0.01
    for p, b in zip(net.learnable_params, before):
        p.data[...] = b
    solver.step(1)
    for k, (p, b, g) in enumerate(zip(net.learnable_params, before, grads)):
        upd = g * (0.01 / norm) + 0.001 * net.params_weight_decay[k] * np.sign(b)
        np.testing.assert_allclose(p.data, b - 0.1 * net.params_lr[k] * upd, rtol=1e-4, atol=1e-7)


def test_test_net_shares_weights_and_logs_caffe_lines(tmp_path, caplog):
    path = write_solver(tmp_path, "test_iter: 2\ntest_interval: 5\ndisplay: 5\n")
    solver = caffe.get_solver(path)
    assert len(solver.test_nets) == 1 and "acc" in solver.test_nets[0].outputs
    solver.net.params["ip1"][0].data[...] = 0.25
    assert np.all(solver.test_nets[0].params["ip1"][0].data == 0.25)
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        run(solver, 0, 6)
    text = caplog.text
    assert "Iteration 0, Testing net (#0)" in text and "Iteration 5, Testing net (#0)" in text
    assert "    Test net output #0: acc = " in text
    assert "    Test net output #1: loss = " in text and "(* 1 = " in text
    assert "Iteration 5, loss = " in text and "Iteration 5, lr = 0.1" in text
    assert "    Train net output #0: loss = " in text


def test_snapshot_and_resume_is_exact(tmp_path):
    path = write_solver(tmp_path, 'type: "Nesterov"\nlr_policy: "multistep"\ngamma: 0.5\nstepvalue: 3\n'
                                  'stepvalue: 9\n')
    full = caffe.get_solver(path)
    run(full, 0, 12)
    first = caffe.get_solver(path)
    run(first, 0, 5)
    state = first.snapshot()
    assert state.endswith("snap_iter_5.solverstate")
    assert (tmp_path / "snap_iter_5.caffemodel").exists()
    assert not list(tmp_path.glob(".tmp*"))
    resumed = caffe.get_solver(path)
    resumed.restore(state)
    assert resumed.iter == 5 and resumed.current_step == first.current_step == 1
    run(resumed, 5, 12)
    for name, blobs in full.net.params.items():
        for a, b in zip(blobs, resumed.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("kind", ["SGD", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW"])
def test_every_solver_state_round_trips(tmp_path, kind):
    extra = 'type: "%s"\n' % kind + ("momentum: 0\n" if kind in ("AdaGrad", "RMSProp") else "")
    extra += "snapshot_format: HDF5\n" if kind == "Adam" else ""
    path = write_solver(tmp_path, extra)
    a = caffe.get_solver(path)
    run(a, 0, 4)
    state = a.snapshot()
    b = caffe.get_solver(path)
    b.restore(state)
    run(a, 4, 7)
    run(b, 4, 7)
    for x, y in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_array_equal(x.data, y.data)


def test_solver_errors(tmp_path):
    with pytest.raises(PcnError, match="unknown type 'Foo'"):
        caffe.get_solver(write_solver(tmp_path, 'type: "Foo"\n'))
    with pytest.raises(PcnError, match="momentum cannot be used with AdaGrad"):
        caffe.get_solver(write_solver(tmp_path, 'type: "AdaGrad"\n'))
    with pytest.raises(PcnError, match="unknown lr_policy 'bogus'"):
        s = caffe.get_solver(write_solver(tmp_path, 'lr_policy: "bogus"\n'))
        s.lr
    with pytest.raises(PcnError, match="not found: .*nope.solverstate"):
        caffe.get_solver(write_solver(tmp_path)).restore(str(tmp_path / "nope.solverstate"))
    with pytest.raises(PcnError, match="test_iter"):
        extra = 'test_interval: 5\ntest_net: "%s"\n' % (tmp_path / "net.prototxt")
        caffe.get_solver(write_solver(tmp_path, extra))


def test_legacy_solver_type_and_default_snapshot_prefix(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "my_solver.prototxt"
    path.write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nsolver_type: ADAGRAD\n')
    solver = caffe.get_solver(str(path))   # the net path resolves next to the solver file
    assert isinstance(solver, caffe.AdaGradSolver)
    assert solver.param.snapshot_prefix == str(tmp_path / "my_solver")


def test_solve_runs_to_max_iter_and_snapshots_after_train(tmp_path):
    path = write_solver(tmp_path, "snapshot_after_train: true\n")
    solver = caffe.get_solver(path)
    feed(solver.net, 0)
    solver.solve()
    assert solver.iter == 20 and (tmp_path / "snap_iter_20.caffemodel").exists()
    state = caffe_pb2.SolverState()
    state.ParseFromString((tmp_path / "snap_iter_20.solverstate").read_bytes())
    assert state.iter == 20 and len(state.history) == 4 and state.learned_net.endswith("snap_iter_20.caffemodel")


def test_repository_relative_net_path_resolves_from_the_model_folder(tmp_path, monkeypatch):
    # models/x/solver.prototxt names "models/x/net.prototxt" (relative to the repository root, as BVLC's examples
    # do); running from models/x must still find it, through the solver folder's parents.
    model_dir = tmp_path / "models" / "x"
    model_dir.mkdir(parents=True)
    (model_dir / "net.prototxt").write_text(NET)
    (model_dir / "solver.prototxt").write_text('net: "models/x/net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    monkeypatch.chdir(model_dir)
    solver = caffe.get_solver("solver.prototxt")
    assert solver.net.name == "tiny"
    monkeypatch.chdir(tmp_path / "models")
    with pytest.raises(PcnError, match="missing.prototxt"):
        (model_dir / "bad.prototxt").write_text('net: "models/x/missing.prototxt"\nbase_lr: 0.1\n')
        caffe.get_solver("x/bad.prototxt")


@pytest.mark.parametrize("after_train", [True, False])
def test_stop_request_ends_training_like_caffe(tmp_path, caplog, after_train):
    path = write_solver(tmp_path, "snapshot_after_train: %s\n" % str(after_train).lower())
    solver = caffe.get_solver(path)
    feed(solver.net, 0)
    solver.action_request = lambda: "stop" if solver.iter == 3 else "none"
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        solver.solve()
    assert solver.iter == 3 and solver.requested_early_exit
    assert "Optimization stopped early." in caplog.text and "Optimization Done." not in caplog.text
    assert (tmp_path / "snap_iter_3.caffemodel").exists() == after_train


def test_snapshot_request_snapshots_and_goes_on(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path))
    feed(solver.net, 0)
    solver.action_request = lambda: "snapshot" if solver.iter in (4, 7) else "none"
    solver.solve()
    assert solver.iter == 20 and not solver.requested_early_exit
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*.caffemodel")) == ["snap_iter_4.caffemodel",
                                                                            "snap_iter_7.caffemodel"]


def test_stop_request_during_a_test_pass(tmp_path, caplog):
    solver = caffe.get_solver(write_solver(tmp_path, "test_iter: 3\ntest_interval: 5\n"
                                           'test_net: "%s"\n' % (tmp_path / "net.prototxt")))
    feed(solver.net, 0)
    feed(solver.test_nets[0], 0)
    calls = []

    def request():
        calls.append(solver.iter)
        # at iteration 5 the first poll ends the training step, the next ones come from the test pass
        return "stop" if calls.count(5) == 2 else "none"

    solver.action_request = request
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        solver.solve()
    assert solver.iter == 5 and "Test interrupted." in caplog.text and "stopped early" in caplog.text


def adamw_reference(w, grads, lr, lr_mult, wd, decay_mult, adamw_decay, b1, b2, eps):
    """MyCaffe's AdamW step by step (SGDSolver.Regularize, then math.cu adamw_update_kernel_withdecay, then
    Net.Update), in float64, for one parameter over the given gradients."""
    w, m, v = w.copy(), np.zeros_like(w), np.zeros_like(w)
    for it, g in enumerate(grads):
        t = it + 1
        g = g + wd * decay_mult * w
        r, d = lr * lr_mult, adamw_decay * decay_mult
        if d:
            w = w * (1 - r * d)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - (r / (1 - b1 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
    return w


ADAMW = 'type: "AdamW"\nmomentum: 0.75\nmomentum2: 0.875\ndelta: 0.0625\nadamw_decay: 0.25\nbase_lr: 0.125\n'


def _adamw_steps(tmp_path, extra, steps=4):
    """Runs ``steps`` AdamW iterations on the tiny net: (solver, the starting weights, each parameter's gradient
    at every step)."""
    solver = caffe.get_solver(write_solver(tmp_path, extra))
    params = solver.net.learnable_params
    start = [p.data.astype(np.float64) for p in params]
    grads = [[] for _ in params]
    for it in range(steps):
        feed(solver.net, it)
        solver.net.clear_param_diffs()
        solver.net.forward_backward()
        for g, p in zip(grads, params):
            g.append(p.diff.astype(np.float64))
        solver.apply_update()
        solver.iter += 1
    return solver, start, grads


def test_adamw_follows_mycaffe_update(tmp_path):
    # lr_mult 1/2, decay_mult 1/0 (ip1's bias: no decay of either kind); L2 weight_decay 0.001 too, as MyCaffe.
    solver, start, grads = _adamw_steps(tmp_path, ADAMW)
    mults = [(1, 1), (2, 0), (1, 1), (1, 1)]
    for p, w0, g, (lm, dm) in zip(solver.net.learnable_params, start, grads, mults):
        ref = adamw_reference(w0, g, 0.125, lm, 0.001, dm, 0.25, 0.75, 0.875, 0.0625)
        np.testing.assert_allclose(p.data, ref, rtol=2e-6, atol=1e-7)
        assert not np.allclose(p.data, w0)
    solver, start, grads = _adamw_steps(tmp_path, ADAMW.replace("0.25", "0") + "weight_decay: 0\n")
    for p, w0, g, (lm, _) in zip(solver.net.learnable_params, start, grads, mults):
        np.testing.assert_allclose(p.data, adamw_reference(w0, g, 0.125, lm, 0, 0, 0, 0.75, 0.875, 0.0625),
                                   rtol=2e-6, atol=1e-7)


def test_adamw_agrees_with_torch_when_only_decoupled_decay(tmp_path):
    # torch.optim.AdamW: w *= 1 - lr wd; w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), the same as MyCaffe's
    # once the L2 weight_decay is 0 and lr_mult = decay_mult = 1.
    torch = pytest.importorskip("torch")
    net = NET.replace("param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }", "")
    solver = caffe.get_solver(write_solver(tmp_path, ADAMW + "weight_decay: 0\n", net=net))
    params = solver.net.learnable_params
    tensors = [torch.tensor(p.data.astype(np.float64), requires_grad=True) for p in params]
    opt = torch.optim.AdamW(tensors, lr=0.125, betas=(0.75, 0.875), eps=0.0625, weight_decay=0.25)
    for it in range(4):
        feed(solver.net, it)
        solver.net.clear_param_diffs()
        solver.net.forward_backward()
        for tensor, p in zip(tensors, params):
            tensor.grad = torch.tensor(p.diff.astype(np.float64))
            tensor.data = torch.tensor(p.data.astype(np.float64))
        opt.step()
        solver.apply_update()
        solver.iter += 1
        for tensor, p in zip(tensors, params):
            np.testing.assert_allclose(p.data, tensor.detach().numpy(), rtol=2e-6, atol=1e-7)
