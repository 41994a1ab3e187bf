"""Shared fixtures for the myxtts-ops test suite.

* ``rng``: a fresh ``np.random.Generator`` per test, seeded from the test's
  node id and a per-run seed (``MYXTTS_TEST_SEED`` to reproduce; the seed is
  printed in the header and on every failure).
* ``TOLERANCES`` / ``tol``: comparison tolerances per input dtype.
* ``make_inputs``: random ``[B, T, M]`` mel pairs, optional lengths, with
  NaN/Inf injected into valid frames and/or padding on request.
"""

import hashlib
import os
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _importable(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Only fall back to the source tree when the packages are not installed.
if not _importable("myxtts_ops"):
    sys.path.insert(0, _ROOT)
if not _importable("myxtts"):
    sys.path.insert(0, os.path.join(_ROOT, "python"))
_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # for `import oracle`

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes  # noqa: E402

RUN_SEED = int(os.environ.get("MYXTTS_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))

DTYPES = ("float16", "bfloat16", "float32", "float64")

NP_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

# Forward outputs are compared with the float64 oracle evaluated on the
# already-rounded inputs; accumulation is float32 for all but float64, so
# half types get the float32 tolerance. Gradients of half types are rounded
# to the input dtype. A gradient's absolute tolerance scales with its largest
# element (assert_grad_close): a fixed one would exceed every element of a
# large batch's gradient (about coef / count each) and pass a zero gradient.
# grad_floor is what the dtype itself cannot resolve: float16's subnormal
# spacing (2**-24), where small gradients land; the others have none to speak of.
TOLERANCES = {
    "float16": dict(rtol=1e-5, atol=1e-6, grad_rtol=1e-2, grad_floor=2.0**-24),
    "bfloat16": dict(rtol=1e-5, atol=1e-6, grad_rtol=1e-2, grad_floor=0.0),
    "float32": dict(rtol=1e-5, atol=1e-6, grad_rtol=1e-5, grad_floor=0.0),
    "float64": dict(rtol=1e-10, atol=1e-12, grad_rtol=1e-10, grad_floor=0.0),
}


def tol(dtype):
    return TOLERANCES[np.dtype(dtype).name if not isinstance(dtype, str) else dtype]


def pytest_report_header(config):
    return f"myxtts-ops test seed: MYXTTS_TEST_SEED={RUN_SEED}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(
            ("myxtts-ops seed", f"reproduce with MYXTTS_TEST_SEED={RUN_SEED} (node {item.nodeid})")
        )


def seed_for(nodeid):
    h = int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:4], "little")
    return (h ^ RUN_SEED) & 0xFFFFFFFF


@pytest.fixture
def rng(request):
    return np.random.default_rng(seed_for(request.node.nodeid))


def make_inputs(
    rng,
    shape,
    dtype="float32",
    lengths="random",
    lengths_dtype=np.int32,
    nonfinite_valid=0,
    nonfinite_padding=0,
    ties=0,
    scale=1.0,
):
    """Random ``(y_true, y_pred, lengths)`` as NumPy arrays of ``dtype``.

    ``lengths``: "random" (values in [0, T], including the extremes when B is
    large enough), "full" (all T), None (no lengths array), or an explicit
    sequence. ``nonfinite_valid`` / ``nonfinite_padding``: how many NaN/+Inf/-Inf
    values to put into valid frames / padding (split between y_true and
    y_pred). ``ties``: how many valid elements get ``y_pred == y_true``.
    """
    b, t, m = shape
    np_dtype = NP_DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    y_true = (rng.standard_normal(shape) * scale).astype(np_dtype)
    y_pred = (y_true.astype(np.float64) + rng.standard_normal(shape) * scale).astype(np_dtype)
    if isinstance(lengths, str) and lengths == "random":
        lens = rng.integers(0, t + 1, size=b)
        if b >= 3:
            lens[0], lens[1] = t, 0
            rng.shuffle(lens)
    elif isinstance(lengths, str) and lengths == "full":
        lens = np.full([b], t)
    elif lengths is None:
        lens = None
    else:
        lens = np.asarray(lengths)
    eff = np.full([b], t) if lens is None else lens
    valid = np.arange(t)[None, :] < np.asarray(eff)[:, None]
    valid = np.broadcast_to(valid[:, :, None], shape)
    specials = np.array([np.nan, np.inf, -np.inf])

    def poison(mask, count):
        idx = np.flatnonzero(mask)
        if count <= 0 or idx.size == 0:
            return
        pick = rng.choice(idx, size=min(count, idx.size), replace=False)
        for i, flat in enumerate(pick):
            target = y_true if i % 2 == 0 else y_pred
            target.reshape(-1)[flat] = specials[i % 3]

    poison(valid, nonfinite_valid)
    poison(~valid, nonfinite_padding)
    if ties:
        idx = np.flatnonzero(valid & np.isfinite(y_true.astype(np.float64)))
        if idx.size:
            pick = rng.choice(idx, size=min(ties, idx.size), replace=False)
            y_pred.reshape(-1)[pick] = y_true.reshape(-1)[pick]
    if lens is not None:
        lens = np.asarray(lens).astype(lengths_dtype)
    return y_true, y_pred, lens


@pytest.fixture
def inputs(rng):
    """``inputs(shape, dtype=..., ...)`` -> ``make_inputs`` bound to this test's rng."""

    def _make(shape, dtype="float32", **kw):
        return make_inputs(rng, shape, dtype, **kw)

    return _make


def assert_close(actual, expected, rtol, atol, what=""):
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected).astype(np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def assert_grad_close(actual, expected, dtype, what="", coef_terms=None):
    """Gradient comparison: ``grad_rtol`` per element, and an absolute
    tolerance of a tenth of that relative to the largest expected magnitude
    (elements near zero), never below the dtype's ``grad_floor``.

    ``coef_terms`` ([B], ``oracle.coefficient_terms``): with upstream
    gradients of both signs a sample's coefficient can nearly cancel, and is
    then exact only to a few roundings (in the accumulation type) of its two
    terms; sample b's elements (each the coefficient times at most 1 in
    magnitude) get that much more."""
    t = tol(dtype)
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected).astype(np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    atol = max(t["grad_floor"], t["grad_rtol"] * scale * 0.1)
    if coef_terms is None:
        np.testing.assert_allclose(actual, expected, rtol=t["grad_rtol"], atol=atol, err_msg=what)
        return
    eps = float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)
    for b, terms in enumerate(np.asarray(coef_terms, np.float64)):
        np.testing.assert_allclose(
            actual[b],
            expected[b],
            rtol=t["grad_rtol"],
            atol=max(atol, 4 * eps * terms),
            err_msg=f"{what} (sample {b})",
        )
