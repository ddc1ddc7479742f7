"""The README's quickstart runs exactly as written, and its commands exist."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python code block after {heading!r} in README.md"
    return match.group(1)


def test_quickstart_runs_as_written():
    code = _python_block_after("## Quickstart")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "layer 1 / W" in result.stdout, result.stdout


def test_quickstart_under_x64_agrees_to_float64_rounding_with_the_default_tolerances():
    """The README's float64 recipe: the same code inside `with jax.enable_x64(True):`."""
    body = "\n".join("    " + line for line in _python_block_after("## Quickstart").splitlines())
    body = body.replace("rtol=1e-4, atol=1e-6", "")
    code = f"import jax\nwith jax.enable_x64(True):\n{body}\n    print(params[0]['W'].dtype, report.passed)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "float64 True", result.stdout
    errors = [float(line.split()[-3]) for line in result.stdout.splitlines() if line.startswith("layer ")]
    assert len(errors) == 6 and max(errors) < 1e-12, result.stdout


def test_mixed_precision_example_runs_as_written():
    code = _python_block_after("### Mixed precision")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("float32, relative change 0.0") == 3, result.stdout


def test_cnn_example_runs_as_written():
    code = _python_block_after("## Convolutional networks")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "all 12 leaves agree" in result.stdout, result.stdout
    assert "conv2 / W in mixed precision: relative change 0.0" in result.stdout, result.stdout


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make (\w+)", README) + re.findall(r"^make (\w+)", README, re.M):
        assert re.search(rf"^{target}:", makefile, re.M), f"README mentions 'make {target}' but the Makefile has no such target"
