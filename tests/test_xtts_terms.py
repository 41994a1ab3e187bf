"""Every term of the MyXTTS contract (section 3) against an independent float64 NumPy model.

Lengths: all zero, all full, mixed. Non-finite values: none, NaN/Inf in valid
positions (excluded and counted: the per-sample mean is over the finite valid
positions), NaN/Inf in padding (no effect). Gradients stay finite everywhere.
The NumPy models follow the contract's formulas (with the per-sample
speaking-rate normalisation, our documented difference).
"""

import numpy as np
import pytest
import tensorflow as tf

from myxtts_loss import XTTSLoss, terms

B, T, M, U, H, D = 3, 7, 4, 5, 2, 6
LENGTHS = {
    "zero": (np.zeros(B, int), np.zeros(B, int)),
    "full": (np.full(B, T), np.full(B, U)),
    "mixed": (np.array([T, 3, 0]), np.array([U, 2, 1])),
}
NONFINITE = ["none", "valid", "padding"]
#: (lengths, nonfinite) pairs where the non-finite value has somewhere to go:
#: zero lengths have no valid position, full ones no padding.
LENGTHS_NONFINITE = [
    (lengths, where)
    for lengths in LENGTHS
    for where in NONFINITE
    if (lengths, where) not in {("zero", "valid"), ("full", "padding")}
]


# ------------------------------------------------------------- NumPy models
def np_per_sample(elem, lengths):
    """elem [B, N, ...] float64 with NaN marking excluded values; lengths or None."""
    elem = np.asarray(elem, np.float64)
    if lengths is None:
        ok = np.isfinite(elem)
        return elem[ok].sum() / max(ok.sum(), 1)
    per = []
    for b in range(elem.shape[0]):
        x = elem[b, : int(lengths[b])]
        x = x[np.isfinite(x)]
        per.append(x.mean() if x.size else 0.0)
    return float(np.mean(per))


def np_stop(target, pred, lengths, wpos=5.0, eps=0.1):
    y = target[..., 0] * (1 - eps) + eps / 2
    p = np.clip(pred[..., 0], 1e-7, 1 - 1e-7)
    e = -(wpos * y * np.log(p) + (1 - y) * np.log(1 - p))
    return np_per_sample(e, lengths)


def np_attention(a, lx, lm):
    abar = np.mean(a, axis=1)  # NaN in any head excludes the pair
    b, tq, tk = abar.shape
    out = []
    for i in range(b):
        r = max(lx[i] - 1, 1) / max(lm[i] - 1, 1)
        t = np.arange(tq)[:, None]
        j = np.arange(tk)[None, :]
        g = np.exp(-((r * t - j) ** 2) / 4.0)
        e = g / (g.sum(axis=1, keepdims=True) + 1e-8)
        e = np.clip(e, 1e-8, 1 - 1e-8)
        ab = np.clip(abar[i], 1e-8, 1 - 1e-8)
        k = e * np.log(e / ab)
        k = k[: int(lm[i]), : int(lx[i])]
        k = k[np.isfinite(k)]
        out.append(np.clip(k.sum() / max(k.size, 1), 0, 200))
    return float(np.mean(out))


def np_duration(p, d, lx):
    u, v = np.log1p(np.maximum(p, 0)), np.log1p(np.maximum(d, 0))
    return float(np.clip(np_per_sample(np.clip(u - v, -5, 5) ** 2, lx), 0, 25))


def np_pitch(p, t, lengths):
    c = lambda x: np.sign(x) * np.log1p(np.abs(x))  # noqa: E731
    return np_per_sample(np.clip(np.abs(c(p[..., 0]) - c(t[..., 0])), 0, 5), lengths)


def np_energy(p, t, lengths):
    g = lambda x: np.log1p(np.maximum(x, 0))  # noqa: E731
    return np_per_sample(np.clip(np.abs(g(p[..., 0]) - g(t[..., 0])), 0, 8), lengths)


def np_rate(p, t, lx):
    return np_per_sample(np.clip(np.abs(p[..., 0] - t[..., 0]), 0, 10), lx)


def np_diffusion(p, t, lengths):
    # An element whose float32 square overflows (|p - t| >= 2**64) counts as
    # non-finite, as an element whose loss overflows does in the mel op.
    d = p - t
    return np_per_sample(np.where(np.abs(d) < 2.0**64, d**2, np.nan), lengths)


# The contrastive loss is a difference of means of cosines / tau (|s| <= 10):
# float32 rounds it to ~1e-6 absolute however close to zero the total lands,
# so a relative tolerance alone fails on a near-cancelling draw.
CONTRASTIVE_ATOL = 1e-5


def np_contrastive(labels, emb, tau=0.1, margin=0.2):
    z = emb / np.sqrt(np.maximum((emb**2).sum(-1, keepdims=True), 1e-12))
    s = z @ z.T / tau
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    pos, neg = (same & off).astype(float), (~same & off).astype(float)
    return -(s * pos).sum() / max(pos.sum(), 1) + (
        np.maximum(s * neg - margin, 0) * neg
    ).sum() / max(neg.sum(), 1)


def np_mel_batch_huber(t, p, lengths, delta=1.0):
    d = p - t
    ad = np.abs(d)
    h = np.where(ad <= delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    return np_per_sample(h, lengths)


# ------------------------------------------------------------------ inputs
def _poison(x, lengths, where, rng, value):
    """NaN/Inf into one valid position (sample 0) or one padded position."""
    x = x.copy()
    if where == "valid" and lengths is not None and lengths[0] > 0:
        idx = (0, int(rng.integers(lengths[0]))) + (0,) * (x.ndim - 2)
        x[idx] = value
    elif where == "padding" and lengths is not None:
        b = int(np.argmin(lengths))
        if lengths[b] < x.shape[1]:
            x[(b, x.shape[1] - 1) + (0,) * (x.ndim - 2)] = value
    return x


def _masked_nan(x, lengths, where, poisoned, clean):
    """The NumPy model's view: poisoned valid elements become NaN (excluded)."""
    if where != "valid":
        return clean
    out = clean.astype(np.float64).copy()
    out[~np.isfinite(poisoned)] = np.nan
    return out


CASES = [
    "stop",
    "duration",
    "pitch",
    "energy",
    "prosody_pitch",
    "prosody_energy",
    "speaking_rate",
    "diffusion",
]


def _case(name, rng, lm, lx):
    """(tf function of (pred, target), np model of (pred, target), pred, target, lengths)."""
    if name == "stop":
        tgt = (np.arange(T)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float32)
        pred = rng.uniform(0.01, 0.99, (B, T, 1)).astype(np.float32)
        return (
            lambda p, t: terms.stop_token_loss(t, p, lm),
            lambda p, t: np_stop(t, p, lm),
            pred,
            tgt,
            lm,
        )
    if name == "duration":
        pred = rng.normal(1, 2, (B, U)).astype(np.float32)
        tgt = rng.uniform(0, 5, (B, U)).astype(np.float32)
        return (
            lambda p, t: terms.duration_loss(p, t, lx),
            lambda p, t: np_duration(p, t, lx),
            pred,
            tgt,
            lx,
        )
    n, ln = (T, lm) if name in ("pitch", "energy") else (U, lx)
    pred = rng.normal(0, 3, (B, n, 1)).astype(np.float32)
    tgt = rng.normal(0, 3, (B, n, 1)).astype(np.float32)
    if name in ("pitch", "prosody_pitch"):
        return (
            lambda p, t: terms.pitch_loss(p, t, ln),
            lambda p, t: np_pitch(p, t, ln),
            pred,
            tgt,
            ln,
        )
    if name in ("energy", "prosody_energy"):
        return (
            lambda p, t: terms.energy_loss(p, t, ln),
            lambda p, t: np_energy(p, t, ln),
            pred,
            tgt,
            ln,
        )
    if name == "speaking_rate":
        pred = rng.normal(2, 8, (B, U, 1)).astype(np.float32)
        return (
            lambda p, t: terms.speaking_rate_loss(p, t, lx),
            lambda p, t: np_rate(p, t, lx),
            pred,
            tgt,
            lx,
        )
    pred = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    tgt = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    return (
        lambda p, t: terms.diffusion_loss(p, t, lm),
        lambda p, t: np_diffusion(p, t, lm),
        pred,
        tgt,
        lm,
    )


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("lengths,nonfinite", LENGTHS_NONFINITE)
def test_term_against_numpy(name, lengths, nonfinite, rng):
    lm, lx = LENGTHS[lengths]
    fn, model, pred, tgt, ln = _case(name, rng, lm, lx)
    value = float(rng.choice([np.nan, np.inf, -np.inf]))
    bad_pred = _poison(pred, ln, nonfinite, rng, value)
    expected = model(
        _masked_nan(pred, ln, nonfinite, bad_pred, pred.astype(np.float64)), tgt.astype(np.float64)
    )
    p = tf.constant(bad_pred)
    with tf.GradientTape() as tape:
        tape.watch(p)
        got = fn(p, tf.constant(tgt))
    grad = tape.gradient(got, p)
    np.testing.assert_allclose(float(got), expected, rtol=2e-5, atol=1e-6)
    assert got.dtype == tf.float32 and got.shape == ()
    if grad is not None:
        assert np.all(np.isfinite(grad.numpy()))
        if nonfinite != "none":
            assert np.all(grad.numpy()[~np.isfinite(bad_pred)] == 0)


@pytest.mark.parametrize("name", CASES + ["attention", "contrastive"])
def test_module_functions_compute_float64_inputs_in_float64(name, rng):
    """Contract 6: plain functions, no cast down. float64 inputs give a float64
    value (and gradient) that matches the float64 model past float32's
    precision; float32 inputs still give float32."""
    lm, lx = LENGTHS["mixed"]
    if name == "attention":
        logits = rng.normal(0, 1, (B, H, T, U))
        pred = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        fn, expected = (lambda p, t: terms.attention_loss(p, lx, lm)), np_attention(pred, lx, lm)
        tgt = None
    elif name == "contrastive":
        labels = np.array([0, 1, 0, 2, 1])
        pred = rng.normal(0, 1, (5, D))
        fn, expected = (lambda p, t: terms.contrastive_speaker_loss(labels, p)), None
        expected = np_contrastive(labels, pred)
        tgt = None
    else:
        fn, model, pred, tgt, _ = _case(name, rng, lm, lx)
        pred = pred.astype(np.float64) * (1 + 1e-9)  # bits float32 does not have
        tgt = tgt.astype(np.float64)
        expected = model(pred, tgt)
    p = tf.constant(pred)
    with tf.GradientTape() as tape:
        tape.watch(p)
        got = fn(p, None if tgt is None else tf.constant(tgt))
    assert got.dtype == tf.float64, got.dtype
    np.testing.assert_allclose(float(got), expected, rtol=1e-11, atol=1e-13)
    grad = tape.gradient(got, p)
    assert grad is not None and grad.dtype == tf.float64
    assert np.all(np.isfinite(grad.numpy()))
    p32 = tf.constant(pred.astype(np.float32))
    got32 = fn(p32, None if tgt is None else tf.constant(tgt.astype(np.float32)))
    assert got32.dtype == tf.float32
    np.testing.assert_allclose(float(got32), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [terms.pitch_loss, terms.energy_loss, terms.diffusion_loss])
def test_float64_without_lengths_counts_exactly_past_2_24_elements(fn):
    """The plain mean's count is taken in the inputs' dtype: 2**24 + 1 elements
    in float32 would count as 2**24 (a relative error of 6e-8)."""
    n = 2**24 + 1
    shape = (1, n, 1) if fn is not terms.diffusion_loss else (1, 1, n)
    pred, target = np.ones(shape), np.zeros(shape)
    per_element = {terms.pitch_loss: np.log(2.0), terms.energy_loss: np.log(2.0)}.get(fn, 1.0)
    got = fn(pred, target)
    assert got.dtype == tf.float64
    np.testing.assert_allclose(float(got), per_element, rtol=1e-14)


def test_tensor_settings_meet_float64_inputs(rng):
    """float32 tensor settings are cast to the inputs' dtype, not mixed with it."""
    lm, _ = LENGTHS["mixed"]
    t = (np.arange(T)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float64)
    p = rng.uniform(0.01, 0.99, (B, T, 1))
    for from_logits in (False, True):
        plain = terms.stop_token_loss(t, p, lm, 5.0, float(np.float32(0.1)), from_logits)
        tensors = terms.stop_token_loss(
            t, p, lm, tf.constant(5.0), tf.constant(0.1), from_logits=from_logits
        )
        assert tensors.dtype == tf.float64
        np.testing.assert_allclose(float(tensors), float(plain), rtol=1e-14)
    np.testing.assert_allclose(
        float(terms.stop_token_loss(t, p, lm)), np_stop(t, p, lm), rtol=1e-11
    )
    labels, emb = np.array([0, 1, 0, 2, 1]), rng.normal(0, 1, (5, D))
    got = terms.contrastive_speaker_loss(labels, emb, tf.constant(0.1), tf.constant(0.2))
    assert got.dtype == tf.float64
    tau, margin = float(np.float32(0.1)), float(np.float32(0.2))  # the tensors' values
    np.testing.assert_allclose(
        float(got), np_contrastive(labels, emb, tau, margin), rtol=1e-11, atol=1e-13
    )


@pytest.mark.parametrize("lengths,nonfinite", LENGTHS_NONFINITE)
def test_attention_against_numpy(lengths, nonfinite, rng):
    lm, lx = LENGTHS[lengths]
    logits = rng.normal(0, 1, (B, H, T, U))
    a = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    bad = a.copy()
    if nonfinite == "valid" and lm[0] > 0 and lx[0] > 0:
        bad[0, 1, 0, 0] = np.nan
    if nonfinite == "padding" and lm[-1] < T:
        bad[-1, 0, T - 1, U - 1] = np.inf
    model_in = a.astype(np.float64)
    model_in[~np.isfinite(bad)] = np.nan
    expected = np_attention(model_in, lx, lm)
    at = tf.constant(bad)
    with tf.GradientTape() as tape:
        tape.watch(at)
        got = terms.attention_loss(at, lx.astype(np.float32), lm)
    np.testing.assert_allclose(float(got), expected, rtol=2e-5, atol=1e-6)
    assert np.all(np.isfinite(tape.gradient(got, at).numpy()))


def test_contrastive_against_numpy(rng):
    labels = np.array([0, 1, 0, 2, 1])
    emb = rng.normal(0, 1, (5, D))
    got = terms.contrastive_speaker_loss(labels.astype(np.float32), emb.astype(np.float32))
    np.testing.assert_allclose(
        float(got), np_contrastive(labels, emb), rtol=1e-5, atol=CONTRASTIVE_ATOL
    )
    # Identical positives reach -1/tau (a negative value, kept).
    same = np.repeat(emb[:1], 2, axis=0)
    np.testing.assert_allclose(
        float(terms.ContrastiveSpeakerLoss()(np.array([3.0, 3.0]), same)), -10.0, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_contrastive_integer_labels_compare_exactly(dtype, rng):
    """Integer speaker ids are compared as given: ids that differ only past
    float32's 24-bit mantissa (2**24 and 2**24 + 1) are two speakers."""
    base = 2**24 if dtype == np.int32 else 2**40
    labels = np.array([base, base + 1, base, base + 1], dtype)
    # Each speaker's two rows alike and the speakers orthogonal: two speakers
    # give -1 / tau = -10, one merged speaker -(4 x 10 + 8 x 0) / 12.
    a, b = rng.normal(0, 1, (2, D))
    b -= (a @ b) / (a @ a) * a
    emb = np.stack([a, b, a, b])
    got = terms.contrastive_speaker_loss(tf.constant(labels), emb.astype(np.float32))
    np.testing.assert_allclose(
        float(got), np_contrastive(labels, emb), rtol=1e-5, atol=CONTRASTIVE_ATOL
    )
    merged = np_contrastive(np.zeros(4), emb)
    assert abs(float(got) - merged) > 1.0  # what one merged speaker would give


@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_mel_loss_function_huber_batch_mean(lengths, rng):
    lm, _ = LENGTHS[lengths]
    t = rng.normal(0, 2, (B, T, M)).astype(np.float32)
    p = rng.normal(0, 2, (B, T, M)).astype(np.float32)
    got = terms.mel_loss(t, p, lm, label_smoothing=0.0)
    np.testing.assert_allclose(
        float(got), np_mel_batch_huber(t.astype(np.float64), p, lm), rtol=1e-5, atol=1e-7
    )
    l1 = terms.mel_loss(t, p, None, label_smoothing=0.0, use_huber_loss=False)
    np.testing.assert_allclose(float(l1), np.abs(p - t.astype(np.float64)).mean(), rtol=1e-5)


def test_mel_noise_is_deterministic_and_over_valid_frames(rng):
    t = rng.normal(0, 2, (B, T, M)).astype(np.float32)
    p = rng.normal(0, 2, (B, T, M)).astype(np.float32)
    lm = np.array([T, 3, 2])
    a = float(terms.mel_loss(t, p, lm, seed=3))
    assert a == float(terms.mel_loss(t, p, lm, seed=3))
    assert a != float(terms.mel_loss(t, p, lm, seed=4))
    # Garbage (even NaN) in the padding changes neither the noise scale nor the value.
    t_bad = t.copy()
    t_bad[1, 5:] = np.nan
    t_bad[2, 4:] = 1e6
    assert float(terms.mel_loss(t_bad, p, lm, seed=3)) == pytest.approx(a, rel=1e-6)
    # The noise scale is 0.05 * std over the valid elements.
    noisy = terms.mel_target_noise(
        tf.constant(t), tf.constant(lm, tf.int32), 0.05, tf.constant([1, 2], tf.int64)
    ).numpy()
    valid = np.arange(T)[None, :] < lm[:, None]
    std = t[valid].std()
    assert np.std((noisy - t)[valid]) == pytest.approx(0.05 * std, rel=0.3)


def test_target_noise_is_the_same_on_every_path():
    """The preset's noise: one stream eagerly, in a graph and under XLA (same seed,
    same values up to float rounding), standard normal, and another for another seed."""
    import math

    shape = tf.constant([7, 300, 40])
    seed = tf.constant([5, 17], tf.int64)

    def draw(s):
        return terms.standard_normal_noise(shape, s)

    eager = draw(seed).numpy()
    graph = tf.function(draw)(seed).numpy()
    xla = tf.function(draw, jit_compile=True)(seed).numpy()
    np.testing.assert_array_equal(graph, eager)
    np.testing.assert_allclose(xla, eager, rtol=0, atol=5e-6)
    assert not np.allclose(draw(tf.constant([5, 18], tf.int64)).numpy(), eager, atol=0.1)
    # N(0, 1): moments and the Kolmogorov-Smirnov distance to the normal CDF.
    z = eager.ravel().astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 0.01
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(np.sort(z) / math.sqrt(2.0)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)  # the 1 % critical value
    # Through the mel term's noise: the same noisy targets under XLA.
    rng = np.random.default_rng(1)
    t = tf.constant(rng.normal(0, 2, (3, 50, 8)).astype(np.float32))
    lens = tf.constant([50, 20, 0], tf.int32)

    def noisy(x, n):
        return terms.mel_target_noise(x, n, 0.05, seed)

    np.testing.assert_allclose(
        tf.function(noisy, jit_compile=True)(t, lens).numpy(),
        noisy(t, lens).numpy(),
        rtol=0,
        atol=1e-5,
    )
    # And the preset's loss at the same seed and step, eagerly and in a jit_compile step.
    p = tf.constant(rng.normal(0, 2, (3, 50, 8)).astype(np.float32))
    values = []
    for jit in (False, True):
        loss_fn = XTTSLoss.myxtts_original(use_adaptive_weights=False, mel_noise_seed=9)
        y_true = {"mel_target": t, "mel_lengths": lens}
        if jit:
            values.append(float(tf.function(loss_fn, jit_compile=True)(y_true, {"mel_output": p})))
        else:
            values.append(float(loss_fn(y_true, {"mel_output": p})))
    assert values[1] == pytest.approx(values[0], rel=1e-6)


def test_create_stop_targets_and_statistics():
    got = terms.create_stop_targets(np.array([3.0, 0.0, 9.0, 5.0]), 5).numpy()
    assert got.shape == (4, 5, 1) and got.dtype == np.float32
    expected = np.zeros((4, 5, 1), np.float32)
    expected[0, 2, 0] = 1.0
    expected[3, 4, 0] = 1.0
    np.testing.assert_array_equal(got, expected)
    assert terms.create_stop_targets(np.array([2]), tf.constant(4)).shape == (1, 4, 1)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    mean, std = terms.compute_mel_statistics(x)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 1), keepdims=True))


def test_gradient_participation_and_all_terms_in_xtts_loss(rng):
    """XTTSLoss reports each term as the NumPy model says and sums them with their weights."""
    lm, lx = np.array([T, 4, 2]), np.array([U, 3, 1])
    mel_t = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    mel_p = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    stop_t = (np.arange(T)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float32)
    stop_p = rng.uniform(0.05, 0.95, (B, T, 1)).astype(np.float32)
    logits = rng.normal(0, 1, (B, H, T, U))
    att = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    dur_p, dur_t = (
        rng.normal(1, 2, (B, U)).astype(np.float32),
        rng.uniform(0, 4, (B, U)).astype(np.float32),
    )
    f = lambda *s: rng.normal(0, 2, s).astype(np.float32)  # noqa: E731
    y_true = {
        "mel_target": mel_t,
        "stop_target": stop_t,
        "mel_lengths": lm.astype(np.float32),
        "text_lengths": lx.astype(np.float32),
        "duration_target": dur_t,
        "pitch_target": f(B, T, 1),
        "energy_target": f(B, T, 1),
        "prosody_pitch_target": f(B, U, 1),
        "prosody_energy_target": f(B, U, 1),
        # prosody_speaking_rate_target missing: its prediction gets the participation term
    }
    y_pred = {
        "mel_output": mel_p,
        "stop_tokens": stop_p,
        "attention_weights": att,
        "duration_pred": dur_p,
        "pitch_output": f(B, T, 1),
        "energy_output": f(B, T, 1),
        "prosody_pitch": f(B, U, 1),
        "prosody_energy": f(B, U, 1),
        "prosody_speaking_rate": f(B, U, 1),
    }
    loss_fn = XTTSLoss(use_adaptive_weights=False)
    total = float(loss_fn(y_true, y_pred))
    d = lambda k: y_true[k].astype(np.float64)  # noqa: E731
    q = lambda k: y_pred[k].astype(np.float64)  # noqa: E731
    expected = {
        "mel_loss": np_per_sample(np.abs(q("mel_output") - d("mel_target")), lm)
        * B
        / np.sum(lm > 0),
        "stop_loss": np_stop(d("stop_target"), q("stop_tokens"), lm),
        "attention_loss": np_attention(q("attention_weights"), lx, lm),
        "duration_loss": np_duration(q("duration_pred"), d("duration_target"), lx),
        "pitch_loss": np_pitch(q("pitch_output"), d("pitch_target"), lm),
        "energy_loss": np_energy(q("energy_output"), d("energy_target"), lm),
        "prosody_pitch_loss": np_pitch(q("prosody_pitch"), d("prosody_pitch_target"), lx),
        "prosody_energy_loss": np_energy(q("prosody_energy"), d("prosody_energy_target"), lx),
        "gradient_participation_loss": 1e-6 * np.mean(q("prosody_speaking_rate") ** 2),
    }
    got = loss_fn.get_losses()
    assert list(got) == list(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=2e-5, atol=1e-9, err_msg=k)
    c = loss_fn.config
    weights = {
        "mel_loss": c.mel_loss_weight,
        "stop_loss": c.stop_loss_weight,
        "attention_loss": c.attention_loss_weight,
        "duration_loss": c.duration_loss_weight,
        "pitch_loss": c.pitch_loss_weight,
        "energy_loss": c.energy_loss_weight,
        "prosody_pitch_loss": c.prosody_pitch_loss_weight,
        "prosody_energy_loss": c.prosody_energy_loss_weight,
        "gradient_participation_loss": 1.0,
    }
    np.testing.assert_allclose(total, sum(weights[k] * expected[k] for k in expected), rtol=2e-5)
    weighted = loss_fn.get_weighted_losses()
    assert list(weighted)[:2] == ["mel_loss", "mel_weight"]
    assert list(weighted)[-2:] == ["gradient_participation_loss", "raw_total_loss"]
    np.testing.assert_allclose(float(weighted["raw_total_loss"]), total, rtol=1e-6)


def _overflow_case(rng):
    """Stop, pitch and diffusion terms with mixed lengths and a prosody
    speaking-rate prediction without its target (the participation term)."""
    lm = np.array([T, 4, 0])
    y_true = {
        "stop_target": (np.arange(T)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float32),
        "mel_lengths": lm.astype(np.float32),
        "pitch_target": rng.normal(0, 2, (B, T, 1)).astype(np.float32),
        "diffusion_noise_target": rng.normal(0, 1, (B, T, M)).astype(np.float32),
    }
    y_pred = {
        "stop_tokens": rng.uniform(0.05, 0.95, (B, T, 1)).astype(np.float32),
        "pitch_output": rng.normal(0, 2, (B, T, 1)).astype(np.float32),
        "diffusion_noise_pred": rng.normal(0, 1, (B, T, M)).astype(np.float32),
        "prosody_speaking_rate": rng.normal(0, 1, (B, U, 1)).astype(np.float32),
    }
    return lm, y_true, y_pred


def _np_terms(lm, y_true, y_pred):
    d = lambda k: y_true[k].astype(np.float64)  # noqa: E731
    q = lambda k: y_pred[k].astype(np.float64)  # noqa: E731
    return {
        "stop_loss": np_stop(d("stop_target"), q("stop_tokens"), lm),
        "pitch_loss": np_pitch(q("pitch_output"), d("pitch_target"), lm),
        "diffusion_loss": np_diffusion(q("diffusion_noise_pred"), d("diffusion_noise_target"), lm),
        "gradient_participation_loss": 1e-6 * np.mean(q("prosody_speaking_rate") ** 2),
    }


def _total_and_grads(loss_fn, y_true, y_pred, mode):
    y_true = {k: tf.constant(v) for k, v in y_true.items()}
    y_pred = {k: tf.constant(v) for k, v in y_pred.items()}

    def step(yt, yp):
        with tf.GradientTape() as tape:
            tape.watch(yp)
            total = loss_fn(yt, yp)
        return total, tape.gradient(total, yp)

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    total, grads = step(y_true, y_pred)
    return float(total), {k: g.numpy() for k, g in grads.items()}


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("overflow", ["diffusion_element", "participation_value", "weighted_pitch"])
def test_an_overflowing_term_is_dropped_alone(overflow, mode, rng):
    """Contract 3.11-3.12: each weighted term is sanitised on its own. A term
    whose weighted value overflows float32 (its reduction or its weight) adds
    0 and no gradient while the others stay; a diffusion element whose square
    overflows is left out as a non-finite element (as in the mel op). The
    step counts as non-finite either way, and every gradient is finite."""
    lm, y_true, y_pred = _overflow_case(rng)
    settings = dict(use_adaptive_weights=False)
    if overflow == "diffusion_element":
        # 3e38 - (-3e38) overflows too: no gradient may turn into inf * 0.
        y_pred["diffusion_noise_pred"][0, 1, 2] = 3e19
        y_pred["diffusion_noise_pred"][1, 0, 0] = 3e38
        y_true["diffusion_noise_target"][1, 0, 0] = -3e38
    elif overflow == "participation_value":
        y_pred["prosody_speaking_rate"][2, 3, 0] = 3e19  # its square is inf
    else:
        # Every pitch error at its clip (5): 3e38 x 5 is inf.
        y_pred["pitch_output"][:] = 50.0
        y_true["pitch_target"][:] = -50.0
        settings["pitch_loss_weight"] = 3e38
    loss_fn = XTTSLoss(**settings)
    total, grads = _total_and_grads(loss_fn, y_true, y_pred, mode)
    expected = _np_terms(lm, y_true, y_pred)
    c = loss_fn.config
    weights = {
        "stop_loss": c.stop_loss_weight,
        "pitch_loss": c.pitch_loss_weight,
        "diffusion_loss": c.diffusion_loss_weight,
        "gradient_participation_loss": 1.0,
    }
    dropped = {
        "diffusion_element": None,
        "participation_value": "gradient_participation_loss",
        "weighted_pitch": "pitch_loss",
    }[overflow]
    want = sum(weights[k] * v for k, v in expected.items() if k != dropped)
    np.testing.assert_allclose(total, want, rtol=2e-5)
    np.testing.assert_allclose(float(loss_fn.get_raw_total_loss()), want, rtol=2e-5)
    for name, g in grads.items():
        assert np.isfinite(g).all(), name
    if overflow == "diffusion_element":
        g = grads["diffusion_noise_pred"]
        assert g[0, 1, 2] == 0 and g[1, 0, 0] == 0 and g[0, 0, 0] != 0
    elif overflow == "participation_value":
        assert not grads["prosody_speaking_rate"].any()
    else:
        assert not grads["pitch_output"].any() and grads["stop_tokens"].any()
    assert int(loss_fn.get_stability_metrics()["nonfinite_steps"]) == 1


def test_mel_loss_function_of_an_empty_batch_is_zero():
    """The module function's batch mean over B = 0 samples is 0, with lengths or without."""
    empty = np.zeros([0, T, M], np.float32)
    for lengths in (np.zeros(0, np.float32), None):
        for huber in (True, False):
            got = terms.mel_loss(empty, empty, lengths, use_huber_loss=huber)
            assert float(got) == 0.0, (lengths, huber)


def test_empty_dicts_give_zero():
    loss_fn = XTTSLoss()
    assert float(loss_fn({}, {})) == 0.0
    assert {k: float(v) for k, v in loss_fn.get_losses().items()} == {
        "gradient_participation_loss": 0.0
    }


def test_original_preset_matches_contract_numbers(rng):
    """XTTSLoss.myxtts_original: Huber mel with the 0.05*std noise, batch mean, over 3.1."""
    lm = np.array([T, 4, 0])
    t = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    p = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    loss_fn = XTTSLoss.myxtts_original(use_adaptive_weights=False, mel_noise_seed=5)
    loss_fn({"mel_target": t, "mel_lengths": lm}, {"mel_output": p})
    got = float(loss_fn.get_losses()["mel_loss"])
    exact = np_mel_batch_huber(t.astype(np.float64), p, lm)
    # The noise of the first call: seed (mel_noise_seed, step 0), N(0, 1) values
    # (their distribution is tested above) times 0.05 * the population std of
    # the valid target elements; then the float64 model on the noisy targets.
    z = terms.standard_normal_noise(tf.constant([B, T, M]), tf.constant([5, 0], tf.int64))
    valid = np.broadcast_to((np.arange(T)[None, :] < lm[:, None])[..., None], t.shape)
    sigma = 0.05 * t[valid].astype(np.float64).std()
    noisy = t.astype(np.float64) + sigma * z.numpy().astype(np.float64)
    model = np_mel_batch_huber(noisy, p, lm)
    assert got == pytest.approx(model, rel=1e-5)
    # The noise moves the value by a signed sum, now and then by less than the
    # tolerance: the noise is visible wherever the model says it moved it.
    if abs(model - exact) > 1e-4 * abs(exact):
        assert got != pytest.approx(exact, rel=1e-5)
    # Deterministic noise: same seed and step, same value.
    again = XTTSLoss.myxtts_original(use_adaptive_weights=False, mel_noise_seed=5)
    again({"mel_target": t, "mel_lengths": lm}, {"mel_output": p})
    assert float(again.get_losses()["mel_loss"]) == got
    no_noise = XTTSLoss.myxtts_original(use_adaptive_weights=False, mel_label_smoothing=0.0)
    no_noise({"mel_target": t, "mel_lengths": lm}, {"mel_output": p})
    np.testing.assert_allclose(float(no_noise.get_losses()["mel_loss"]), exact, rtol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_original_preset_statistics_track_its_mel_term(rng, mode):
    """The preset's mel term is the mean over all B samples (an empty one adds
    0); the fused op averages over the samples it counted. The running mel
    loss (the adaptive rule's reference and the variance gate's window) must
    follow the term, not the op: on a constant batch with an empty sample it
    settles on the term's value (it settled on twice that with 2 samples, one
    empty, and the rule kept lowering the weight of a loss that never moved)."""
    lm = np.array([T, 4, 0])
    t = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    p = rng.normal(0, 1, (B, T, M)).astype(np.float32)
    loss_fn = XTTSLoss.myxtts_original(mel_label_smoothing=0.0)
    yt, yp = {"mel_target": t, "mel_lengths": lm}, {"mel_output": p}
    call = {
        "eager": lambda: loss_fn(yt, yp),
        "graph": tf.function(lambda: loss_fn(yt, yp)),
        "xla": tf.function(lambda: loss_fn(yt, yp), jit_compile=True),
    }[mode]
    for _ in range(40):
        call()
    mel = float(loss_fn.get_losses()["mel_loss"])
    np.testing.assert_allclose(mel, np_mel_batch_huber(t.astype(np.float64), p, lm), rtol=1e-5)
    running = float(loss_fn.get_stability_metrics()["running_mel_loss"])
    np.testing.assert_allclose(running, mel, rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph", "graph_unknown_shapes", "xla"])
def test_length_columns_are_lengths(rng, mode):
    """``mel_lengths`` / ``text_lengths`` as [B, 1] columns (Keras-style
    targets) give what the [B] vectors give; a [B, 2] column is refused
    naming the key, also when its last axis is unknown when traced."""
    lm, lx = np.array([T, 3, 0]), np.array([U, 2, 1])
    yt = {
        "mel_target": rng.normal(size=(B, T, M)).astype(np.float32),
        "mel_lengths": lm.astype(np.float32),
        "text_lengths": lx.astype(np.float32),
        "stop_target": (np.arange(T)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float32),
        "pitch_target": rng.normal(size=(B, T, 1)).astype(np.float32),
    }
    yp = {
        "mel_output": rng.normal(size=(B, T, M)).astype(np.float32),
        "stop_tokens": rng.uniform(0.1, 0.9, (B, T, 1)).astype(np.float32),
        "pitch_output": rng.normal(size=(B, T, 1)).astype(np.float32),
        "attention_weights": rng.uniform(0, 1, (B, H, T, U)).astype(np.float32),
    }
    columns = dict(yt, mel_lengths=yt["mel_lengths"][:, None], text_lengths=lx[:, None] * 1.0)
    vector_loss, column_loss = XTTSLoss(), XTTSLoss()

    def in_mode(loss_fn, example):
        # The vectors run the same way as the columns: XLA's float32 reductions
        # sum in another order than TF's, by more than 1e-6 of the attention term.
        if mode == "eager":
            return lambda y: loss_fn(y, yp)
        if mode == "graph_unknown_shapes":
            spec = {k: tf.TensorSpec([None] * np.ndim(v), tf.float32) for k, v in example.items()}
            return tf.function(lambda y: loss_fn(y, yp), input_signature=[spec])
        return tf.function(lambda y: loss_fn(y, yp), jit_compile=mode == "xla")

    call = in_mode(column_loss, columns)
    expected = float(
        in_mode(vector_loss, yt)({k: tf.constant(v, tf.float32) for k, v in yt.items()})
    )
    columns = {k: tf.constant(v, tf.float32) for k, v in columns.items()}
    # Equal up to the summation order of the graph's (threaded) reductions.
    np.testing.assert_allclose(float(call(columns)), expected, rtol=1e-6)
    got, want = column_loss.get_losses(), vector_loss.get_losses()
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6, err_msg=key)
    wide = dict(columns, mel_lengths=tf.ones([B, 2]))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="mel_lengths"):
        call(wide)


# ------------------------------------------------- stop term's hand-written gradient
def np_stop_grads(target, pred, lengths, wpos=5.0, eps=0.1, lo=1e-7):
    """d stop_token_loss / d (target, pred) in float64: (1 / B) (1 / n_b) d elem
    (without lengths, the plain mean: 1 / n d elem), zero outside the lengths,
    at non-finite inputs, and (for pred) where the probability is clipped (the
    clip bounds are those of float32)."""
    t = target[..., 0].astype(np.float64)
    p = pred[..., 0].astype(np.float64)
    lo32, hi32 = float(np.float32(lo)), float(np.float32(1.0 - lo))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = t * (1 - eps) + eps / 2
        pc = np.clip(p, lo32, hi32)
        d_pred = (1 - y) / (1 - pc) - wpos * y / pc
        d_true = -(1 - eps) * (wpos * np.log(pc) - np.log(1 - pc))
    g_t, g_p = np.zeros_like(t), np.zeros_like(p)
    if lengths is None:
        ok = np.isfinite(t) & np.isfinite(p)
        c = 1.0 / max(ok.sum(), 1)
        inside = ok & (p >= lo32) & (p <= hi32)
        g_t[ok] = c * d_true[ok]
        g_p[inside] = c * d_pred[inside]
        return g_t[..., None], g_p[..., None]
    for b in range(t.shape[0]):
        n = int(lengths[b])
        ok = np.isfinite(t[b, :n]) & np.isfinite(p[b, :n])
        if not ok.any():
            continue
        c = 1.0 / (t.shape[0] * ok.sum())
        inside = ok & (p[b, :n] >= lo32) & (p[b, :n] <= hi32)
        g_t[b, :n] = np.where(ok, c * d_true[b, :n], 0.0)
        g_p[b, :n] = np.where(inside, c * d_pred[b, :n], 0.0)
    return g_t[..., None], g_p[..., None]


@pytest.mark.parametrize("lengths", list(LENGTHS) + ["none"])
@pytest.mark.parametrize("nonfinite", NONFINITE)
def test_stop_gradient_against_numpy(lengths, nonfinite, rng):
    """Both gradients of the stop term (a hand-written gradient) against float64
    NumPy: probabilities inside (0, 1), clipped ones (below 0, above 1, exactly
    at a clip bound, which passes its gradient as tf.clip_by_value does),
    soft targets, NaN/Inf in valid positions and in padding."""
    lm = None if lengths == "none" else LENGTHS[lengths][0]
    tgt = rng.uniform(0, 1, (B, T, 1)).astype(np.float32)
    pred = rng.uniform(0.01, 0.99, (B, T, 1)).astype(np.float32)
    pred[0, 1, 0], pred[1, 0, 0], pred[2, 2, 0] = -0.5, 1.5, np.float32(1e-7)
    pred[0, 2, 0] = np.float32(1.0 - 1e-7)
    value = float(rng.choice([np.nan, np.inf, -np.inf]))
    where = lm if lm is not None else np.full(B, T)  # no lengths: every position is valid
    bad_pred = _poison(pred, where, nonfinite, rng, value)
    bad_tgt = _poison(tgt, where, nonfinite, rng, value)
    p, t = tf.constant(bad_pred), tf.constant(bad_tgt)
    with tf.GradientTape() as tape:
        tape.watch([p, t])
        got = terms.stop_token_loss(t, p, lm)
    g_t, g_p = tape.gradient(got, [t, p])
    want_t, want_p = np_stop_grads(bad_tgt, bad_pred, lm)
    np.testing.assert_allclose(g_p.numpy(), want_p, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_t.numpy(), want_t, rtol=1e-4, atol=1e-7)
    # The value, with the clip bounds of float32 (where the term computes).
    tv = bad_tgt[..., 0].astype(np.float64)
    pv = bad_pred[..., 0].astype(np.float64)
    with np.errstate(invalid="ignore"):
        y = tv * 0.9 + 0.05
        pc = np.clip(pv, float(np.float32(1e-7)), float(np.float32(1 - 1e-7)))
        e = -(5.0 * y * np.log(pc) + (1 - y) * np.log(1 - pc))
    e[~(np.isfinite(tv) & np.isfinite(pv))] = np.nan
    np.testing.assert_allclose(float(got), np_per_sample(e, lm), rtol=2e-5, atol=1e-6)


def test_stop_gradient_matches_autodiff_of_the_formula(rng):
    """The hand-written gradient equals TF autodiff of the contract's formula
    (what the term computed before it had one) on ordinary inputs."""
    lm = np.array([T, 4, 1])
    tgt = (rng.uniform(0, 1, (B, T)) > 0.7).astype(np.float32)
    pred = rng.uniform(0.02, 0.98, (B, T)).astype(np.float32)
    p, t = tf.constant(pred), tf.constant(tgt)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([p, t])
        got = terms.stop_token_loss(t, p, lm)
        y = t * 0.9 + 0.05
        pc = tf.clip_by_value(p, 1e-7, 1.0 - 1e-7)
        e = -(5.0 * y * tf.math.log(pc) + (1.0 - y) * tf.math.log(1.0 - pc))
        mask = tf.sequence_mask(lm, T, tf.float32)
        plain = tf.reduce_mean(tf.reduce_sum(e * mask, 1) / np.maximum(lm, 1))
    np.testing.assert_allclose(float(got), float(plain), rtol=1e-6)
    # Each gradient is a difference of two O(1) terms that crosses zero inside
    # the drawn range, where the two float32 computations differ by ~1e-7.
    for a, b in zip(tape.gradient(got, [t, p]), tape.gradient(plain, [t, p])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------- attention term's hand-written gradient
def np_attention_grad(a, lx, lm):
    """d attention_loss / d a in float64: for sample b, [0 <= mean KL <= 200] /
    (B * n_b * H) * (-E / A) at counted pairs whose head mean A is inside the
    clip bounds (float32's), the same in every head; zero elsewhere."""
    lo32, hi32 = float(np.float32(1e-8)), float(np.float32(1 - 1e-8))
    abar = np.mean(a, axis=1)
    b, h, tq, tk = a.shape
    grad = np.zeros_like(abar)
    for i in range(b):
        r = max(lx[i] - 1, 1) / max(lm[i] - 1, 1)
        g = np.exp(-((r * np.arange(tq)[:, None] - np.arange(tk)[None, :]) ** 2) / 4.0)
        e = np.clip(g / (g.sum(axis=1, keepdims=True) + 1e-8), 1e-8, 1 - 1e-8)
        ok = np.zeros((tq, tk), bool)
        ok[: int(lm[i]), : int(lx[i])] = True
        ok &= np.isfinite(abar[i])
        if not ok.any():
            continue
        with np.errstate(invalid="ignore"):
            ab = np.clip(np.where(ok, abar[i], 1.0), lo32, hi32)
        mean_kl = (e * np.log(e / ab))[ok].sum() / ok.sum()
        if not 0.0 <= mean_kl <= 200.0:
            continue
        inside = ok & (abar[i] >= lo32) & (abar[i] <= hi32)
        grad[i] = np.where(inside, -e / ab, 0.0) / (b * ok.sum() * h)
    return np.repeat(grad[:, None], h, axis=1)


@pytest.mark.parametrize("lengths,nonfinite", LENGTHS_NONFINITE)
def test_attention_gradient_against_numpy(lengths, nonfinite, rng):
    """The attention term's hand-written gradient against float64 NumPy: every
    head gets 1/H of the head mean's gradient; pairs outside the lengths, with a
    non-finite value in any head, or whose mean is clipped get zero."""
    lm, lx = LENGTHS[lengths]
    logits = rng.normal(0, 2, (B, H, T, U))
    a = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    a[0, :, 1, 1] = 0.0  # a head mean below the clip bound: no gradient there
    bad = a.copy()
    if nonfinite == "valid" and lm[0] > 0 and lx[0] > 0:
        bad[0, 1, 0, 0] = np.nan
    if nonfinite == "padding" and lm[-1] < T:
        bad[-1, 0, T - 1, U - 1] = np.inf
    at = tf.constant(bad)
    with tf.GradientTape() as tape:
        tape.watch(at)
        got = terms.attention_loss(at, lx.astype(np.float32), lm)
    grad = tape.gradient(got, at).numpy()
    model_in = a.astype(np.float64)
    model_in[~np.isfinite(bad)] = np.nan
    np.testing.assert_allclose(float(got), np_attention(model_in, lx, lm), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, np_attention_grad(model_in, lx, lm), rtol=1e-4, atol=1e-9)
