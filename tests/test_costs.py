import re

import keras
import numpy as np
import pytest
from composed import SubclassedDense

from spinalnet_keras import SpinalDense, cost_report, paper_model


def _fc(head):
    return keras.Sequential([keras.Input((320,)), head], name="fc")


def test_mnist_fc_part_multiplications_and_cut():
    dense = keras.Sequential([
        keras.Input((320,)), keras.layers.Dense(50, activation="relu"),
        keras.layers.Dropout(0.5), keras.layers.Dense(10)])
    spinal = _fc(SpinalDense(10, width=8, depth=6))
    rd, rs = cost_report(dense), cost_report(spinal)
    assert rd.multiplications == 320 * 50 + 50 * 10 == 16_500
    assert rs.multiplications == 160 * 8 + 5 * (168 * 8) + 48 * 10 == 8_480
    cut = rs.reduction_vs(rd)
    assert round(100 * cut["multiplications"], 1) == 48.6
    assert rd.trainable_params == 16_560 and rs.trainable_params == 8_538
    assert [c.multiplications for c in rd.layers] == [16_000, 0, 500]


def test_single_layer_needs_input_shape():
    assert cost_report(SpinalDense(10, width=8, depth=6), input_shape=(None, 320)).multiplications == 8_480
    with pytest.raises(ValueError, match="needs its `input_shape`"):
        cost_report(SpinalDense(10, width=8, depth=6))
    with pytest.raises(TypeError, match="expects a keras.Model"):
        cost_report("dense")
    # a built layer is counted for the shape it was built for, or refused
    layer = SpinalDense(10, width=8, depth=6)
    layer.build((None, 320))
    with pytest.raises(ValueError, match=r"built for inputs with 320.*input_shape=\(None, 100\)"):
        cost_report(layer, input_shape=(None, 100))
    dense = keras.layers.Dense(5)
    dense.build((None, 7))
    assert cost_report(dense, input_shape=(None, 7)).multiplications == 35
    with pytest.raises(ValueError, match=r"input_shape=\(None, 3\)"):
        cost_report(dense, input_shape=(None, 3))
    with pytest.raises(ValueError, match="`input_shape` is for a single layer"):
        cost_report(_fc(SpinalDense(10, width=8, depth=6)), input_shape=(None, 320))
    # a shape of sizes or None, named as given (not one letter of a string)
    for shape in ["abc", (None, 0), (None, 2.5), (None, True), (), 320]:
        with pytest.raises(ValueError, match=re.escape(f"Received: input_shape={shape!r}")):
            cost_report(SpinalDense(10, width=8, depth=6), input_shape=shape)
    assert cost_report(keras.layers.Dense(5), input_shape=[None, np.int64(7)]).multiplications == 35


def test_reduction_needs_a_report_with_something_to_cut():
    spinal = cost_report(SpinalDense(10, width=8, depth=6), input_shape=(None, 320))
    dense = cost_report(keras.layers.Dense(50), input_shape=(None, 320))
    assert spinal.reduction_vs(dense)["multiplications"] == pytest.approx(1 - 8_480 / 16_000)
    with pytest.raises(TypeError, match="CostReport.*Received: baseline=16000"):
        spinal.reduction_vs(dense.multiplications)
    nothing = cost_report(keras.layers.ReLU(), input_shape=(None, 320))
    with pytest.raises(ValueError, match=r"no multiplications to cut from \(0\)"):
        spinal.reduction_vs(nothing)


def test_rank_3_positions_and_convolutions():
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(10, 5),                        # 5*5*1*10 * 24*24
        keras.layers.BatchNormalization(),                 # element-wise: 0
        keras.layers.DepthwiseConv2D(3, padding="same"),   # 3*3*10 * 24*24
        keras.layers.Reshape((24 * 24, 10)),
        SpinalDense(width=2, depth=2, splits=2),           # (5*2 + (5+2)*2) * 576
    ])
    report = cost_report(model)
    assert [c.multiplications for c in report.layers] == [
        144_000, 0, 51_840, 0, 24 * 576]
    assert report.non_trainable_params == 20
    assert "| **total** |" in report.to_markdown()


def test_einsum_time_distributed_and_embedding():
    model = keras.Sequential([
        keras.Input((7,), dtype="int32"),
        keras.layers.Embedding(10, 4),                               # look-ups: 0
        keras.layers.TimeDistributed(SpinalDense(3, width=4, depth=2)),
        keras.layers.EinsumDense("abc,cd->abd", output_shape=(7, 5)),  # 7*5 outputs * 3
        keras.layers.TimeDistributed(keras.layers.Dense(2)),         # 5*2 * 7 steps
        keras.layers.Flatten(),
        keras.layers.EinsumDense("ab,bc->ac", output_shape=(3,), bias_axes="c"),  # 14*3
        keras.layers.EinsumDense("...b,bc->...c", output_shape=(2,)),             # 3*2
    ])
    report = cost_report(model)
    # the spinal step: 2*4 + (2+4)*4 + 2*4*3 = 56, over 7 steps
    assert [c.multiplications for c in report.layers] == [0, 56 * 7, 105, 70, 0, 42, 6]
    assert report.unknown_layers == ()
    # the same as the layer itself on the sequence
    spinal = keras.Sequential([keras.Input((7, 4)), SpinalDense(3, width=4, depth=2)])
    assert cost_report(spinal).multiplications == 56 * 7
    # an EinsumDense equals the Dense it writes out
    dense = keras.Sequential([keras.Input((14,)), keras.layers.Dense(3)])
    assert cost_report(dense).multiplications == 42


def test_unknown_weighted_layer_is_reported_not_guessed():
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.SimpleRNN(5), keras.layers.Dense(2)])
    report = cost_report(model)
    assert report.unknown_layers == ("simple_rnn",)
    assert report.multiplications == 10
    assert "unknown" in str(report)


def test_nested_model_is_expanded_and_paper_totals():
    report = cost_report(paper_model("mnist_cnn", head="spinal"))
    assert report.trainable_params == 13_818
    by_name = {c.name: c.multiplications for c in report.layers}
    assert by_name["head_spinal"] == 8_480
    # conv 1: 5*5*1*10 * 24*24; conv 2: 5*5*10*20 * 8*8
    assert by_name["conv_1"] == 144_000 and by_name["conv_2"] == 320_000
    inner = paper_model("regression", head="dense")
    outer = keras.Sequential([keras.Input((8,)), inner])
    assert cost_report(outer).multiplications == 8 * 200 + 200 * 100 + 100


def test_a_layer_called_more_than_once_counts_every_call():
    # A shared layer runs once per call: a Siamese pair costs twice one branch.
    left, right = keras.Input((5, 8)), keras.Input((7, 8))
    shared = keras.layers.Dense(4, name="shared")
    pair = keras.Model([left, right], [shared(left), shared(right)])
    (row,) = cost_report(pair).layers
    assert row.multiplications == 5 * 8 * 4 + 7 * 8 * 4  # each call at its own length
    assert (row.calls, row.output_shape, row.trainable_params) == (2, (None, 5, 4), 36)
    assert "| shared (2 calls) | Dense |" in str(cost_report(pair))
    # a nested model used twice: its layers count twice, their weights once
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="inner_dense")])
    a, b = keras.Input((8,)), keras.Input((8,))
    twice = keras.Model([a, b], keras.layers.Add()([inner(a), inner(b)]))
    report = cost_report(twice)
    assert report.multiplications == 2 * 24 and report.trainable_params == 27
    assert report.layers[0].calls == 2
    # a layer also called in another model counts this model's calls alone,
    # at this model's shapes
    other = keras.Model(left, shared(left))
    assert (cost_report(other).multiplications, cost_report(other).layers[0].calls) == (160, 1)
    short = keras.Input((2, 8))
    assert cost_report(keras.Model(short, shared(short))).multiplications == 2 * 8 * 4


def test_subclassed_and_unbuilt_models_get_clear_errors():
    net = SubclassedDense()
    with pytest.raises(ValueError, match="not built"):
        cost_report(net)
    net(keras.ops.zeros((1, 4)))
    with pytest.raises(ValueError, match="subclassed models"):
        cost_report(net)
