"""nnjax.gradcheck: compare, numerical_grad, check, and the `python -m nnjax.gradcheck` command."""
import collections
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import gradcheck
from nnjax.gradcheck import Case, GradCheckReport, check, compare, leaf_names, numerical_grad


def _mlp_like(rng, dtype=np.float64):
    return [{"W": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(3).astype(dtype)},
            {"W": rng.standard_normal((2, 3)).astype(dtype), "b": rng.standard_normal(2).astype(dtype)}]


# --- compare ----------------------------------------------------------------------------

def test_compare_identical_trees_pass():
    grads = _mlp_like(np.random.default_rng(0))
    report = compare(grads, grads)
    assert isinstance(report, GradCheckReport) and report.passed
    assert [r.name for r in report.rows] == ["layer 1 / W", "layer 1 / b", "layer 2 / W", "layer 2 / b"]
    assert all(r.max_abs_err == 0 and r.max_rel_err == 0 and r.passed for r in report.rows)
    assert str(report).splitlines()[-1].startswith("all 4 leaves agree")


@pytest.mark.parametrize("layer, leaf, index", [(1, "W", (1, 2)), (0, "b", (0,)), (1, "b", (1,))])
def test_compare_finds_one_perturbed_element_and_names_its_leaf(layer, leaf, index):
    grads = _mlp_like(np.random.default_rng(1))
    wrong = jax.tree_util.tree_map(np.copy, grads)
    wrong[layer][leaf][index] += 1e-3
    report = compare(wrong, grads)
    name = f"layer {layer + 1} / {leaf}"
    assert not report.passed
    failed = [r for r in report.rows if not r.passed]
    assert [r.name for r in failed] == [name]
    assert failed[0].max_abs_err == pytest.approx(1e-3, rel=1e-6)
    text = str(report)
    line = next(l for l in text.splitlines() if l.startswith(name))
    assert line.split()[-1] == "FAIL" and "1.0e-03" in line
    assert all(l.split()[-1] == "ok" for l in text.splitlines()[2:-1] if not l.startswith(name))
    assert text.splitlines()[-1].startswith("FAIL: 1 of 4 leaves disagree") and name in text.splitlines()[-1]


def test_compare_table_columns_are_aligned():
    text = str(compare({"conv1": {"gamma": np.ones(3)}, "dense1": {"W": np.ones((2, 5))}},
                       {"conv1": {"gamma": np.ones(3)}, "dense1": {"W": np.ones((2, 5))}}))
    header, rule, *rows, summary = text.splitlines()
    assert header.split() == ["leaf", "shape", "max", "abs", "err", "max", "rel", "err", "status"]
    assert [r.split("  ")[0] for r in rows] == ["conv1 / gamma", "dense1 / W"]
    starts = [m.start() for m in re.finditer(r"\S+", rule)]
    for row in rows:  # every column starts where its rule does
        assert all(row[s - 1] == " " and row[s] != " " for s in starts[1:])


def test_compare_errors_and_tolerance_rule():
    a = {"w": np.array([1.0, 0.0, -2.0, 5.0])}
    b = {"w": np.array([1.1, 0.0, -2.0, 5.0 + 4e-5])}
    row = compare(a, b).rows[0]
    assert row.max_abs_err == pytest.approx(0.1)
    assert row.max_rel_err == pytest.approx(0.1 / 1.1)
    rng = np.random.default_rng(2)
    for _ in range(20):  # `passed` is NumPy's allclose(a, b, rtol, atol)
        x, y = rng.standard_normal(5), rng.standard_normal(5)
        y = x + rng.choice([1e-9, 1e-6, 1e-4]) * y
        assert compare(x, y, rtol=1e-5, atol=1e-7).passed == np.allclose(x, y, rtol=1e-5, atol=1e-7)
    assert compare({"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, 2.1])}, rtol=0.1).passed
    assert not compare({"w": np.array([np.nan])}, {"w": np.array([np.nan])}).passed
    near_zero = str(compare({"b": np.array([1e-9]), "w": np.array([1.0])}, {"b": np.array([2e-9]), "w": np.array([1.0])}))
    assert near_zero.splitlines()[-1] == "(b: a large relative error but ok, because the gradient is near 0 and the error within atol=1e-07)"
    with pytest.raises(TypeError, match=r"compare: leaf 'w' of grads_b has dtype complex64"):
        compare({"w": np.array([1.0])}, {"w": np.array([1 + 1j], np.complex64)})  # as real, it would pass


def test_leaf_names():
    Pair = collections.namedtuple("Pair", "first second")
    tree = {"conv1": {"gamma": 1.0, "W": 2.0}, "layers": [{"W": 3.0}, {"W": 4.0}], "out": (5.0, 6.0),
            "pair": Pair(7.0, 8.0)}
    assert leaf_names(tree) == ["conv1 / W", "conv1 / gamma", "layers / layer 1 / W",
                                "layers / layer 2 / W", "out / [0]", "out / [1]",
                                "pair / first", "pair / second"]
    assert leaf_names(np.ones(3)) == ["value"]


def test_compare_mismatched_trees_name_the_leaves():
    grads = _mlp_like(np.random.default_rng(3))
    missing_b = [grads[0], {"W": grads[1]["W"]}]
    with pytest.raises(ValueError, match=r"only in grads_a: \['layer 2 / b'\]; only in grads_b: \[\]"):
        compare(grads, missing_b)
    with pytest.raises(ValueError, match=r"only in grads_a: \[\]; only in grads_b: \['layer 3 / W'\]"):
        compare(grads, grads + [{"W": np.ones(1)}])
    renamed = [grads[0], {"weight": grads[1]["W"], "b": grads[1]["b"]}]
    with pytest.raises(ValueError, match=r"only in grads_a: \['layer 2 / W'\]; only in grads_b: \['layer 2 / weight'\]"):
        compare(grads, renamed)
    W = collections.namedtuple("W", "W")
    with pytest.raises(ValueError, match=r"same leaf names \['W'\] but different containers"):
        compare({"W": np.ones(2)}, W(np.ones(2)))
    transposed = [{"W": grads[0]["W"].T, "b": grads[0]["b"]}, grads[1]]
    with pytest.raises(ValueError, match=r"leaf 'layer 1 / W' has shape \(3, 4\) in grads_a but \(4, 3\) in grads_b"):
        compare(grads, transposed)


# --- numerical_grad -----------------------------------------------------------------------

def test_numerical_grad_matches_known_gradients(x64):
    rng = np.random.default_rng(4)
    params = {"a": jnp.asarray(rng.standard_normal((2, 3))), "b": [jnp.asarray(rng.standard_normal(3)),
                                                                  jnp.asarray(1.5)]}

    def f(p):
        return jnp.sum(jnp.sin(p["a"]) * p["b"][0] ** 2) + jnp.exp(p["b"][1]) * jnp.sum(p["a"][0])

    analytic = {"a": np.cos(params["a"]) * params["b"][0] ** 2 + np.exp(1.5) * np.array([[1.0], [0.0]]),
                "b": [2 * params["b"][0] * np.sin(params["a"]).sum(0),
                      np.exp(1.5) * np.sum(params["a"][0])]}
    for chunk_elements in (2 ** 20, 30):  # all 10 directions at once; chunks of 3 (uneven)
        grads = numerical_grad(f, params, chunk_elements=chunk_elements)
        assert compare(grads, analytic, rtol=1e-8, atol=1e-9).passed
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(grads))


def test_numerical_grad_of_a_quadratic_is_exact_to_rounding(x64):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((4, 4))
    x = jnp.asarray(rng.standard_normal(4))
    grads = numerical_grad(lambda x: x @ A @ x, x)
    np.testing.assert_allclose(grads, (A + A.T) @ np.asarray(x), rtol=1e-8, atol=1e-9)


def test_numerical_grad_warns_for_float32():
    with pytest.warns(UserWarning, match=r"numerical_grad: leaves \['W \(float32\)'\] are below float64.*enable_x64"):
        numerical_grad(lambda p: jnp.sum(p["W"] ** 2), {"W": jnp.ones(3, jnp.float32)})


def test_numerical_grad_errors(x64):
    with pytest.raises(ValueError, match=r"numerical_grad: f must return a scalar, got \(3,\)"):
        numerical_grad(lambda p: p * 2, jnp.ones(3))
    with pytest.raises(TypeError, match=r"numerical_grad: leaf 'layer 1 / n' has dtype int"):
        numerical_grad(lambda p: jnp.sum(p[0]["n"]), [{"n": jnp.arange(3)}])
    for eps in (0.0, -1e-6):
        with pytest.raises(ValueError, match=f"numerical_grad: eps must be > 0.*got {eps}"):
            numerical_grad(lambda p: jnp.sum(p ** 2), jnp.ones(3), eps=eps)


def test_run_case_outside_x64_says_so():
    """In float32 every finite difference would be off by ~1e-3 and the row would fail
    without saying why."""
    result = gradcheck.run_case(gradcheck.CASES[0], np.random.default_rng(0))
    assert result.error == "RuntimeError: run_case needs float64: call it under `with jax.enable_x64(True):`"


# --- check --------------------------------------------------------------------------------

def _mse_loss(params, X, Y):
    return jnp.mean(jnp.sum((X @ params["W"].T + params["b"] - Y) ** 2, axis=-1))


def _mse_grads(params, X, Y, factor=2.0):
    delta = factor * (X @ params["W"].T + params["b"] - Y) / X.shape[0]
    return {"W": delta.T @ X, "b": delta.sum(0)}


def test_check_passes_for_a_correct_gradient_and_fails_for_a_wrong_one(x64):
    rng = np.random.default_rng(6)
    params = {"W": jnp.asarray(rng.standard_normal((2, 3))), "b": jnp.asarray(rng.standard_normal(2))}
    X, Y = jnp.asarray(rng.standard_normal((5, 3))), jnp.asarray(rng.standard_normal((5, 2)))
    good = check(_mse_loss, _mse_grads, params, X, Y)
    assert good.passed and max(r.max_abs_err for r in good.rows) < 1e-12
    bad = check(_mse_loss, lambda p, X, Y: _mse_grads(p, X, Y, factor=1.0), params, X, Y)
    assert not bad.passed and [r.name for r in bad.rows if not r.passed] == ["W", "b"]
    assert check(_mse_loss, lambda p, X, Y: _mse_grads(p, X, Y, factor=2.01), params, X, Y, rtol=0.01).passed
    with pytest.raises(ValueError, match=r"check: loss_fn must return a scalar loss, got shape \(5,\)"):
        check(lambda p, X, Y: jnp.sum((X @ p["W"].T + p["b"] - Y) ** 2, axis=-1), _mse_grads, params, X, Y)


# --- the command --------------------------------------------------------------------------

def _relu_case(backward):
    def make(rng):
        z = np.linspace(-2, 2, 6) + 0.01 * rng.standard_normal(6)  # both signs, none near 0
        return ({"z": z}, lambda p: jnp.maximum(p["z"], 0),
                lambda p, delta: {"z": backward(p["z"], delta)})
    return make


GOOD = Case("relu_backward", "right", _relu_case(lambda z, delta: delta * (z > 0)))
WRONG = Case("relu_backward", "forgets the mask", _relu_case(lambda z, delta: delta))
RAISES = Case("broken_backward", "raises", lambda rng: 1 / 0)


def test_main_reports_ok_and_exits_zero(capsys):
    assert gradcheck.main([], cases=[GOOD]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^relu_backward \(right\)\n  z\s+\(6,\)\s+\S+\s+\S+\s+ok$", out, re.M)
    assert "all 1 gradients in 1 cases agree" in out


def test_main_flags_a_wrong_backward(capsys):
    assert gradcheck.main(["--only", "relu_backward"], cases=[GOOD, WRONG, RAISES]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^relu_backward \(forgets the mask\)\n  z\s+\(6,\)\s+\S+\s+\S+\s+FAIL$", out, re.M)
    assert "FAIL: 1 of 2 cases disagree: relu_backward (forgets the mask)" in out
    assert "broken_backward" not in out


def test_main_reports_a_case_that_raises(capsys):
    assert gradcheck.main(["--only", "broken"], cases=[GOOD, RAISES]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^broken_backward \(raises\)\n  -\s.*ERROR$", out, re.M)
    assert "ERROR in broken_backward (raises): ZeroDivisionError" in out


def test_main_list_and_unknown_names(capsys):
    assert gradcheck.main(["--list"], cases=[GOOD, WRONG]) == 0
    assert capsys.readouterr().out.splitlines() == ["relu_backward (right)", "relu_backward (forgets the mask)"]
    with pytest.raises(SystemExit) as exit_info:
        gradcheck.main(["--only", "conv9d"], cases=[GOOD])
    assert exit_info.value.code == 2
    assert "no case matches ['conv9d']; choose from ['relu_backward']" in capsys.readouterr().err


def test_every_case_name_is_unique():
    names = [case.name for case in gradcheck.CASES]
    assert len(names) == len(set(names))


def test_command_checks_every_layer_and_all_agree():
    """`python -m nnjax.gradcheck` in a fresh process: exit 0, one ok row per gradient."""
    run = subprocess.run([sys.executable, "-m", "nnjax.gradcheck"], capture_output=True, text=True,
                         timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    lines = lines[lines.index("") + 1:]  # after the title
    header = lines[0].split()
    assert header[:2] == ["gradient", "shape"] and header[-1] == "status"
    rows = lines[2:lines.index("")]
    gradients = [row for row in rows if row.startswith("  ")]
    assert gradients and all(row.split()[-1] == "ok" for row in gradients)
    assert [row for row in rows if not row.startswith(" ")] == [case.name for case in gradcheck.CASES]
    assert max(map(len, lines)) <= 90, "the table must fit a terminal"
    layers = {case.layer for case in gradcheck.CASES}
    for layer in ["dense_backward", "conv2d_backward", "max_pool2d_backward", "avg_pool2d_backward",
                  "batch_norm_backward", "layer_norm_backward", "instance_norm_backward",
                  "group_norm_backward", "activation_backward", "softmax_cross_entropy_backward",
                  "mse_backward", "mlp_grads", "mlp_grads_mse", "cnn_grads"]:
        assert layer in layers
    assert re.fullmatch(rf"all \d+ gradients in {len(gradcheck.CASES)} cases agree; tolerance .*:", lines[-2])
