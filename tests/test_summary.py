"""summary(): parameter counts against the params' leaves, output shapes, the table's text."""
import jax
import numpy as np
import pytest

from nnjax.layers import conv_output_size
from nnjax.network import cnn_init, mlp_init
from nnjax.network.summary import count_parameters, summary, summary_rows

CNN_INPUT = (1, 12, 12)


@pytest.fixture(scope="module")
def cnn():
    """The CNN's params and state as shapes only: summary reads nothing else."""
    return jax.eval_shape(lambda key: cnn_init(key, in_shape=CNN_INPUT, channels=(4, 8), hidden=16, classes=3),
                          jax.random.key(0))


def _leaf_total(params):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def test_mlp_counts_and_shapes():
    sizes = [4, 8, 8, 2]
    params = mlp_init(jax.random.key(0), sizes)
    rows = summary_rows(params)
    assert [r.layer for r in rows] == ["input", "dense 1", "dense 2", "dense 3"]
    assert [r.parameters for r in rows[1:]] == [n_out * n_in + n_out for n_in, n_out in zip(sizes, sizes[1:])]
    assert sum(r.parameters for r in rows) == _leaf_total(params) == count_parameters(params) == 130
    assert [r.output_shape for r in rows] == [(n,) for n in sizes]
    assert rows[1].weights == "W (8, 4)" and rows[1].bias == "b (8,)"


def test_mlp_table_text(capsys):
    params = mlp_init(jax.random.key(0), [784, 128, 10])
    text = summary(params, (784,), print_table=True)
    assert capsys.readouterr().out.strip() == text
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Weights", "Bias", "Parameters", "Output", "shape"]
    assert "W (128, 784)" in text and "100,480" in text and "(128,)" in text
    assert lines[-1] == f"Total parameters: {_leaf_total(params):,}"
    assert summary(params) == text
    assert capsys.readouterr().out == ""


def test_cnn_counts_match_leaves(cnn):
    params, _ = cnn
    rows = summary_rows(params, CNN_INPUT)
    assert sum(r.parameters for r in rows) == _leaf_total(params) == count_parameters(params)
    by_name = {r.layer: r for r in rows}
    for name in ("conv1", "bn1", "conv2", "bn2", "dense1", "dense2"):
        assert by_name[name].parameters == _leaf_total(params[name])
    assert by_name["conv2"].weights == "W (8, 4, 3, 3)"
    assert by_name["bn1"].weights == "gamma (4,)" and by_name["bn1"].bias == "beta (4,)"


def test_cnn_output_shapes(cnn):
    params, _ = cnn
    by_name = {r.layer: r.output_shape for r in summary_rows(params, CNN_INPUT)}
    side = conv_output_size(12, 3)  # 10
    assert by_name["conv1"] == by_name["bn1"] == by_name["relu1"] == (4, side, side)
    assert by_name["max_pool1"] == (4, side // 2, side // 2)
    side = conv_output_size(side // 2, 3)  # 3
    assert by_name["conv2"] == (8, side, side)
    assert by_name["flatten"] == (8 * (side // 2) ** 2,)
    assert by_name["max_pool2"] == (8, side // 2, side // 2)
    assert by_name["dense1"] == (16,) and by_name["dense2"] == (3,)


def test_cnn_table_text(cnn):
    params, _ = cnn
    text = summary(params, CNN_INPUT)
    assert "conv1" in text and "max_pool2" in text and "(4, 10, 10)" in text
    assert f"Total parameters: {_leaf_total(params):,}" in text
    assert "running statistics (state, not trained): 24 values" in text
    without_input = summary(params)
    assert "?" in without_input and "input_shape=(C, H, W)" in without_input


def test_cnn_arrays_and_shapes_agree(cnn):
    init = jax.jit(lambda key: cnn_init(key, in_shape=CNN_INPUT, channels=(4, 8), hidden=16, classes=3))
    params, _ = init(jax.random.key(0))
    assert summary(params, CNN_INPUT) == summary(cnn[0], CNN_INPUT)


def test_errors(cnn):
    params = mlp_init(jax.random.key(0), [4, 3])
    with pytest.raises(ValueError, match=r"input_shape=\(5,\).*\(4,\)"):
        summary(params, (5,))
    with pytest.raises(TypeError, match="mlp_init.*cnn_init"):
        summary({"W": np.zeros((2, 2))})
    with pytest.raises(ValueError):
        summary(cnn[0], (1, 20, 20))
