"""bayes_dip.checks: the shared argument checks."""
import math
import subprocess
import sys

import numpy as np
import pytest

from bayes_dip.checks import check_choice, check_int, check_number


def test_check_int_returns_valid_values():
    assert check_int(3, "n") == 3
    assert check_int(1, "n", 1) == 1  # the minimum is allowed
    assert check_int(5, "n", 1, maximum=5) == 5  # so is the maximum
    assert check_int(-7, "n", maximum=0) == -7


@pytest.mark.parametrize("bad", [True, False, 2.0, "3", None, np.int64(3)])
def test_check_int_rejects_non_int_and_bool(bad):
    with pytest.raises(ValueError, match="rank must be an integer") as info:
        check_int(bad, "rank")
    assert repr(bad) in str(info.value)


def test_check_int_bounds():
    with pytest.raises(ValueError, match=r"^--samples must be an integer >= 2, got 1$"):
        check_int(1, "--samples", 2)
    with pytest.raises(ValueError, match=r"^n must be an integer <= 4, got 5$"):
        check_int(5, "n", maximum=4)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 4\], got 0$"):
        check_int(0, "n", 1, maximum=4)
    with pytest.raises(ValueError, match=r"in \[1, 4\], got True"):
        check_int(True, "n", 1, maximum=4)


def test_check_int_numpy_integers_only_when_allowed():
    value = check_int(np.int32(4), "size", 1, allow_numpy=True)
    assert value == 4 and type(value) is int
    with pytest.raises(ValueError, match="size"):
        check_int(np.int32(0), "size", 1, allow_numpy=True)
    with pytest.raises(ValueError, match="size"):
        check_int(np.bool_(True), "size", allow_numpy=True)


def test_check_number_returns_a_float():
    value = check_number(2, "lr", gt=0)
    assert value == 2.0 and type(value) is float
    assert check_number(-math.inf, "x") == -math.inf  # no bounds: any number


@pytest.mark.parametrize("bad", [True, "1.0", None, [1.0]])
def test_check_number_rejects_non_numbers_and_bool(bad):
    with pytest.raises(ValueError, match="evidence.lr must be a number > 0") as info:
        check_number(bad, "evidence.lr", gt=0)
    assert repr(bad) in str(info.value)


def test_check_number_inclusive_and_exclusive_bounds():
    assert check_number(0, "tol", ge=0) == 0.0
    with pytest.raises(ValueError, match=r"^tol must be a number > 0, got 0$"):
        check_number(0, "tol", gt=0)
    with pytest.raises(ValueError, match=r"^tol must be a number >= 0, got -0\.5$"):
        check_number(-0.5, "tol", ge=0)
    assert check_number(1.0, "p", le=1) == 1.0
    with pytest.raises(ValueError, match=r"^p must be a number < 1, got 1\.0$"):
        check_number(1.0, "p", lt=1)
    assert check_number(0.0, "rcond", ge=0, lt=1) == 0.0
    with pytest.raises(ValueError, match=r"^rcond must be a number in \[0, 1\), got 1$"):
        check_number(1, "rcond", ge=0, lt=1)
    with pytest.raises(ValueError, match=r"^p must be a number in \(0, 1\], got 0\.0$"):
        check_number(0.0, "p", gt=0, le=1)


def test_check_number_nan_and_inf():
    with pytest.raises(ValueError, match="got nan"):
        check_number(math.nan, "x", ge=0)
    assert check_number(math.inf, "x", gt=0) == math.inf
    with pytest.raises(ValueError, match=r"^x must be a finite number > 0, got inf$"):
        check_number(math.inf, "x", gt=0, finite=True)
    with pytest.raises(ValueError, match="finite"):
        check_number(math.nan, "x", finite=True)


def test_check_number_takes_one_bound_per_side():
    with pytest.raises(TypeError):
        check_number(1, "x", gt=0, ge=0)
    with pytest.raises(TypeError):
        check_number(1, "x", lt=2, le=2)


def test_check_choice():
    assert check_choice("sum", "mode", ("mean", "sum")) == "sum"
    with pytest.raises(ValueError,
                       match=r"^binning_mode must be one of \('mean', 'sum'\), got 'max'$"):
        check_choice("max", "binning_mode", ("mean", "sum"))
    with pytest.raises(ValueError, match=r"split must be one of \('test', 'train'\)"):
        check_choice(None, "split", {"test": 1, "train": 2})


def test_import_loads_neither_numpy_nor_torch():
    """The command line imports the checks before it sets the thread limits."""
    code = "import sys, bayes_dip.checks; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
