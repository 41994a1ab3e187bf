"""Issue 14 (items 1-4, 8, 9) for XTTSLoss: each test fails on the loss before this change.

1. a mel loss that overflows from finite inputs never enters the running statistics;
2. concurrent eager calls are refused (ConcurrentCallError), never interleaved;
3. a checkpoint saved under other settings is refused on restore, naming the setting;
4. get_config/from_config keeps serialisable extra losses, refuses the others;
8. non-integral lengths, misspelt keys and mismatched shapes are refused, naming them;
9. every setting is type- and range-checked at construction; reduction/dtype honoured or refused.
"""

import os
import re
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import myxtts_ops
from myxtts_loss import ConcurrentCallError, XTTSLoss, XTTSLossConfig, terms
from myxtts_ops import state as layout
from myxtts_ops.validation import MAX_LENGTH


def _pair(value, b=2, t=4, m=3):
    return (
        {"mel_target": tf.zeros([b, t, m]), "mel_lengths": tf.constant([t] + [t - 1] * (b - 1))},
        {"mel_output": tf.fill([b, t, m], value)},
    )


def _in_mode(loss_fn, mode):
    """``loss_fn(y_true, y_pred)`` eagerly, in a ``tf.function`` or compiled with XLA."""
    if mode == "eager":
        return loss_fn
    return tf.function(lambda a, b: loss_fn(a, b), jit_compile=mode == "xla")


def _state_snapshot(loss_fn):
    """Every state variable's value, by name (extra-loss variables included)."""
    return {v.name: np.array(v.numpy()) for v in loss_fn.state_variables}


def _assert_state_unchanged(loss_fn, before, mode):
    """A refused call writes no state variable, on every path (``mode`` names
    it in the message); under XLA, which updates variables in place, because
    every write is selected against the old value after the checks ran."""
    after = _state_snapshot(loss_fn)
    changed = [k for k in before if not np.array_equal(before[k], after[k], equal_nan=True)]
    assert not changed, f"a refused call ({mode}) changed {changed}"


# ------------------------------------------------------------------ item 1
def test_overflowing_mel_loss_is_a_nonfinite_step_and_leaves_statistics_alone():
    import test_xtts_loss as spec

    losses = spec.alternating(240)
    nans = np.zeros(240, bool)
    nans[150] = True
    loss_fn = XTTSLoss()
    step = tf.function(lambda yt, yp: loss_fn(yt, yp))
    weights = []
    for i, L in enumerate(losses):
        if i == 150:  # finite inputs whose difference overflows float32
            yt = {"mel_target": tf.fill([2, 4, 3], -3e38), "mel_lengths": tf.constant([4, 3])}
            yp = {"mel_output": tf.fill([2, 4, 3], 3e38)}
        else:
            yt, yp = _pair(L)
        assert np.isfinite(float(step(yt, yp)))
        weights.append(float(loss_fn.current_mel_weight.numpy()))
    op_state = loss_fn._state.op_state.numpy()
    assert np.all(np.isfinite(op_state))
    assert op_state[layout.STEPS] == 240 and op_state[layout.CLEAN_STEPS] == 239
    assert int(loss_fn.get_stability_metrics()["nonfinite_steps"]) == 1
    np.testing.assert_allclose(weights, spec.run_oracle(spec.Oracle(), losses, nans), rtol=1e-6)


# ------------------------------------------------------------------ item 2
def test_concurrent_eager_calls_are_refused_and_counters_agree():
    loss_fn = XTTSLoss()
    yt, yp = _pair(0.5, b=8, t=64, m=16)
    done, refused = [0, 0], [0, 0]
    barrier = threading.Barrier(2)
    errors = []

    def worker(i):
        barrier.wait()
        for _ in range(150):
            try:
                loss_fn(yt, yp)
                done[i] += 1
            except ConcurrentCallError as exc:
                assert "another thread" in str(exc)
                refused[i] += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    calls = sum(done)
    assert calls + sum(refused) == 300
    # Every accepted call is counted once, by every counter.
    assert int(loss_fn.step_count.numpy()) == calls
    assert loss_fn._state.op_state.numpy()[layout.STEPS] == calls
    # A refused call leaves no trace and the lock is released afterwards.
    loss_fn(yt, yp)
    assert int(loss_fn.step_count.numpy()) == calls + 1


# ------------------------------------------------------------------ item 3
def _trained(**kwargs):
    loss_fn = XTTSLoss(**kwargs)
    for s in range(1, 131):
        loss_fn(*_pair(0.3 if s % 2 else 1.0))
    return loss_fn


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(mel_loss_weight=2.0, use_adaptive_weights=False), "use_adaptive_weights"),
        (dict(mel_loss_weight=2.0), "mel_loss_weight"),
        (dict(adaptive_weight_max_weight=3.0), "adaptive_weight_max_weight"),
    ],
)
def test_checkpoint_with_other_settings_is_refused(tmp_path, kwargs, name):
    first = _trained()
    assert float(first.current_mel_weight.numpy()) != 2.5
    path = tf.train.Checkpoint(loss=first).write(os.path.join(tmp_path, "ckpt"))
    other = XTTSLoss(**kwargs)
    with pytest.raises(ValueError, match=name):
        tf.train.Checkpoint(loss=other).read(path)
    same = XTTSLoss()
    tf.train.Checkpoint(loss=same).read(path).assert_consumed()
    assert float(same.current_mel_weight.numpy()) == float(first.current_mel_weight.numpy())
    # Settings that do not change the state's meaning may differ.
    tf.train.Checkpoint(loss=XTTSLoss(adaptive_weight_cooling_period=20)).read(
        path
    ).assert_consumed()


# ------------------------------------------------------------------ item 4
@keras.saving.register_keras_serializable(package="myxtts_loss_tests")
def mean_aux(y_true, y_pred):
    return tf.reduce_mean(y_pred["aux"])


def test_get_config_round_trip_keeps_extra_losses():
    loss_fn = XTTSLoss(extra_losses={"aux": (mean_aux, 0.5)}, attention_loss_weight=0.02)
    again = XTTSLoss.from_config(loss_fn.get_config())
    yt, yp = _pair(0.5)
    yp["aux"] = tf.constant([1.0, 3.0])
    assert float(again(yt, yp)) == pytest.approx(float(loss_fn(yt, yp)))
    assert again.config == loss_fn.config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss_fn))
    assert float(restored(yt, yp)) == pytest.approx(float(loss_fn(yt, yp)))
    lambda_loss = XTTSLoss(extra_losses={"aux": lambda yt, yp: tf.reduce_mean(yp["aux"])})
    with pytest.raises(ValueError, match="extra loss 'aux'.*not a serialisable"):
        lambda_loss.get_config()


# ------------------------------------------------------------------ item 8
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize(
    "bad, shown",
    [
        ([3.9, 2.7], "3.9 is not a whole number in"),
        ([-1, 2], "-1 is outside"),
        ([2**32 + 3, 2], f"{2**32 + 3} is outside"),
        ([2**31, 2], f"{2**31} is outside"),
        ([np.nan, 2.0], "nan is not a whole number in"),
        ([-2.0, 3.0], "-2 is outside"),
    ],
    ids=["fractional", "negative", "wraps_int32", "int32_max_plus_1", "nan", "negative_float"],
)
def test_lengths_must_be_integral(mode, bad, shown):
    """Bad mel lengths are refused on every path, never clamped into a number:
    by the length check's op, with one message (name, index, value as passed):
    under XLA (assertions compile away) it is a custom call."""
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    yt, yp = _pair(0.5)
    yt["mel_lengths"] = tf.constant([4.0, 3.0])  # integral floats (Keras casts lengths): fine
    assert float(call(yt, yp)) == pytest.approx(1.25)
    before = _state_snapshot(loss_fn)
    dtype = tf.float32 if isinstance(bad[0], float) else tf.int64
    yt["mel_lengths"] = tf.constant(bad, dtype)
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    # On every path the length check's message: the value as passed.
    match = rf"mel_lengths\[0\] = {re.escape(shown)} \[0, 4\] \(the size of y_true\[mel_target\] axis 1\); mel_lengths must be"
    with pytest.raises(error, match=match):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_mel_length_beyond_frames_leaves_the_state(mode):
    """A length the fused op refuses (beyond the frames) is refused on every
    path and, outside XLA, leaves every state variable as it was."""
    loss_fn = XTTSLoss(extra_losses={"aux": lambda yt, yp: tf.reduce_mean(yp["mel_output"])})
    call = _in_mode(loss_fn, mode)
    yt, yp = _pair_with_heads()
    call(yt, yp)
    before = _state_snapshot(loss_fn)
    yt["mel_lengths"] = tf.constant([9, 2])
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=r"mel_lengths\[0\] = 9 is outside \[0, 4\] \(the size of"):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)


# Each term that reads lengths, without the mel term (whose op refuses a mel
# length past the frames itself): the inputs, the length key, the axis named.
_BOUNDED_TERMS = {
    "stop": (
        {"stop_target": tf.zeros([2, 4, 1]), "mel_lengths": tf.constant([4, 3])},
        {"stop_tokens": tf.fill([2, 4, 1], 0.5)},
        "mel_lengths",
        ("stop_target", 1),
    ),
    "pitch": (
        {"pitch_target": tf.ones([2, 4]), "mel_lengths": tf.constant([4, 3])},
        {"pitch_output": tf.zeros([2, 4])},
        "mel_lengths",
        ("pitch_target", 1),
    ),
    "duration": (
        {"duration_target": tf.ones([2, 5]), "text_lengths": tf.constant([5, 3])},
        {"duration_pred": tf.zeros([2, 5])},
        "text_lengths",
        ("duration_target", 1),
    ),
    "speaking_rate": (
        {"prosody_speaking_rate_target": tf.ones([2, 5, 1]), "text_lengths": tf.constant([5, 3])},
        {"prosody_speaking_rate": tf.zeros([2, 5, 1])},
        "text_lengths",
        ("prosody_speaking_rate_target", 1),
    ),
    "attention_tokens": (
        {"text_lengths": tf.constant([3, 2]), "mel_lengths": tf.constant([4, 2])},
        {"attention_weights": tf.fill([2, 2, 4, 3], 1.0 / 3)},
        "text_lengths",
        ("attention_weights", 3),
    ),
    "attention_frames": (
        {"text_lengths": tf.constant([3, 2]), "mel_lengths": tf.constant([4, 2])},
        {"attention_weights": tf.fill([2, 2, 4, 3], 1.0 / 3)},
        "mel_lengths",
        ("attention_weights", 2),
    ),
}


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("term", sorted(_BOUNDED_TERMS))
def test_length_past_its_axis_is_refused_for_every_term(term, mode):
    """A length larger than the axis it indexes would shrink that sample's
    divisor to the axis size (the per-sample mean over fewer positions than
    the length says): refused on every path, naming the key, index, value and
    the axis, and the state is left as it was."""
    yt, yp, key, (bounded, axis) = _BOUNDED_TERMS[term]
    yt = dict(yt)
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    assert np.isfinite(float(call(yt, yp)))
    before = _state_snapshot(loss_fn)
    size = (yp | yt)[bounded].shape[axis]
    yt[key] = tf.concat([yt[key][:1], [size + 1]], 0)
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    where = "y_true" if bounded in yt else "y_pred"
    match = (
        rf"{key}\[1\] = {size + 1} is outside \[0, {size}\] "
        rf"\(the size of {where}\[{bounded}\] axis {axis}\)"
    )
    with pytest.raises(error, match=match):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)
    yt[key] = tf.concat([yt[key][:1], [size]], 0)  # the axis size itself: fine
    assert np.isfinite(float(call(yt, yp)))


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_length_past_an_axis_unknown_when_traced_is_refused(mode):
    """With the sizes unknown when the graph is traced (``reduce_retracing``, the
    MyXTTS trainer's setting, with ``jit_compile=True`` its default), the same
    refusal when the graph runs, the size read then (under XLA: at compile time)."""
    yt, yp, key, _ = _BOUNDED_TERMS["duration"]
    yt = dict(yt)
    loss_fn = XTTSLoss()

    def spec(d):
        return {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in d.items()}

    call = tf.function(
        lambda a, b: loss_fn(a, b),
        input_signature=[spec(yt), spec(yp)],
        jit_compile=mode == "xla",
    )
    call(yt, yp)
    before = _state_snapshot(loss_fn)
    yt[key] = tf.constant([6, 3])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"text_lengths\[0\] = 6 is outside \[0, 5\] \(the size of "
        r"y_true\[duration_target\] axis 1\); text_lengths must be integers no larger than that",
    ):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)
    yt[key] = tf.constant([5, 3])  # the axis size itself: fine
    assert np.isfinite(float(call(yt, yp)))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_module_functions_refuse_a_length_past_their_axis(mode):
    """The module-level term functions refuse a length past the axis it indexes."""
    fns = {
        "predicted_durations": lambda n: terms.duration_loss(tf.ones([2, 5]), tf.zeros([2, 5]), n),
        "predicted_rate": lambda n: terms.speaking_rate_loss(tf.ones([2, 5]), tf.zeros([2, 5]), n),
        "predicted_pitch": lambda n: terms.pitch_loss(tf.ones([2, 5]), tf.zeros([2, 5]), n),
        "predicted_energy": lambda n: terms.energy_loss(tf.ones([2, 5]), tf.zeros([2, 5]), n),
        "predicted_noise": lambda n: terms.diffusion_loss(
            tf.ones([2, 5, 3]), tf.zeros([2, 5, 3]), n
        ),
        "y_pred": lambda n: terms.stop_token_loss(tf.zeros([2, 5, 1]), tf.fill([2, 5, 1], 0.5), n),
        "attention_weights": lambda n: terms.attention_loss(
            tf.fill([2, 1, 5, 5], 0.2), n, tf.constant([5, 5])
        ),
    }
    for label, fn in fns.items():
        call = fn if mode == "eager" else tf.function(fn, jit_compile=mode == "xla")
        assert np.isfinite(float(call(tf.constant([2, 5]))))
        error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
        with pytest.raises(error, match=rf"\[1\] = 6 is outside \[0, 5\] \(the size of {label}"):
            call(tf.constant([2, 6]))


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_refused_validation_call_leaves_the_report(mode):
    """A validation call (training=False) writes only the latest-call report;
    refused, it writes nothing, under XLA too."""
    loss_fn = XTTSLoss()
    call = tf.function(lambda a, b: loss_fn(a, b, training=False), jit_compile=mode == "xla")
    yt, yp = _pair_with_heads()
    loss_fn(yt, yp)
    call(yt, yp)
    before = _state_snapshot(loss_fn)
    yt["text_lengths"] = tf.constant([-4, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="text_lengths"):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)


@pytest.mark.parametrize(
    "lengths, match",
    [
        ([-2, 3], r"lengths\[0\] = -2 is outside \[0, 4\] \(the size of y_pred axis 1\)"),
        ([2.5, 3.0], r"lengths\[0\] = 2\.5 is not a whole number in \[0, 4\]"),
        ([5, 3], r"lengths\[0\] = 5 is outside \[0, 4\] \(the size of y_pred axis 1\)"),
    ],
)
def test_module_mel_loss_refuses_bad_lengths_under_xla(lengths, match):
    """terms.mel_loss refuses a bad entry under XLA, where the terms' own copy
    would otherwise have made it 0, a length beyond the frames included."""
    fn = tf.function(lambda t, p, n: terms.mel_loss(t, p, n, label_smoothing=0.0), jit_compile=True)
    dtype = tf.float32 if isinstance(lengths[0], float) else tf.int32
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        fn(tf.zeros([2, 4, 3]), tf.ones([2, 4, 3]), tf.constant(lengths, dtype))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize(
    "bad, shown",
    [
        ([-1, 2], "-1 is outside"),
        ([2.5, 2.0], "2.5 is not a whole number in"),
        ([np.nan, 2.0], "nan is not a whole number in"),
        ([2**31, 2], f"{2**31} is outside"),
        ([-3.0, 2.0], "-3 is outside"),
    ],
    ids=["negative", "fractional", "nan", "int32_max_plus_1", "negative_float"],
)
def test_text_lengths_refused_on_every_path(mode, bad, shown):
    """Bad text lengths are refused with one message (name, index, value as
    passed) on every path; under XLA (where they used to count as 0) by the
    length check's custom call; the refused call leaves every state variable
    as it was."""
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    yt, yp = _pair_with_heads()
    good = float(call(yt, yp))
    before = _state_snapshot(loss_fn)
    dtype = tf.float32 if isinstance(bad[0], float) else tf.int64
    yt["text_lengths"] = tf.constant(bad, dtype)
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    match = rf"text_lengths\[0\] = {re.escape(shown)} \[0, 5\] \(the size of y_true\[duration_target\] axis 1\); text_lengths must be"
    with pytest.raises(error, match=match):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)
    yt["text_lengths"] = tf.constant([2, 3])
    assert float(call(yt, yp)) == pytest.approx(good)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_unused_text_lengths_are_checked_too(mode):
    """text_lengths given with no term that reads them (mel only) are still
    checked, under XLA too (the check's custom call is never pruned)."""
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    yt, yp = _pair(0.5)
    yt["text_lengths"] = tf.constant([2, 3])
    assert float(call(yt, yp)) == pytest.approx(1.25)
    yt["text_lengths"] = tf.constant([-2, 3])
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    # No input has a token axis: the bound is MAX_LENGTH.
    with pytest.raises(error, match=rf"text_lengths\[0\] = -2 is outside \[0, {MAX_LENGTH}\];"):
        call(yt, yp)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_module_functions_refuse_bad_text_lengths(mode):
    """The module-level term functions that take text lengths refuse a bad one
    on every path, XLA included."""
    fns = {
        "duration": lambda n: terms.duration_loss(tf.zeros([2, 5]), tf.zeros([2, 5]), n),
        "speaking_rate": lambda n: terms.speaking_rate_loss(tf.zeros([2, 5]), tf.zeros([2, 5]), n),
    }
    for name, fn in fns.items():
        call = fn if mode == "eager" else tf.function(fn, jit_compile=mode == "xla")
        assert np.isfinite(float(call(tf.constant([2, 5]))))
        error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
        with pytest.raises(error, match=r"text_lengths"):
            call(tf.constant([2, -4]))


@pytest.mark.parametrize(
    "where, key, hint",
    [
        ("true", "mel_length", "mel_lengths"),
        ("pred", "stop_token", "stop_tokens"),
        ("true", "text_length", "text_lengths"),
        ("pred", "attention_weight", "attention_weights"),
    ],
)
def test_misspelt_keys_are_named(where, key, hint):
    yt, yp = _pair(0.5)
    (yt if where == "true" else yp)[key] = tf.constant([1.0, 2.0])
    with pytest.raises(ValueError, match=f"'{key}'.*did you mean '{hint}'"):
        XTTSLoss()(yt, yp)


def test_other_model_outputs_are_left_alone():
    """MyXTTS models return more outputs (text_encoded, ...): not mistaken for typos."""
    yt, yp = _pair(0.5)
    yp.update(
        text_encoded=tf.zeros([2, 3, 8]),
        encoder_output=tf.zeros([2, 3, 8]),
        mel_postnet=tf.zeros([2, 4, 3]),
    )
    assert float(XTTSLoss()(yt, yp)) == pytest.approx(1.25)


def _pair_with_heads():
    """_pair(0.5) plus consistent stop, duration and pitch inputs (B 2, T 4, U 5)."""
    yt, yp = _pair(0.5)
    yt.update(
        stop_target=tf.zeros([2, 4, 1]),
        text_lengths=tf.constant([2, 3]),
        duration_target=tf.zeros([2, 5]),
        pitch_target=tf.zeros([2, 4, 1]),
    )
    yp.update(
        stop_tokens=tf.fill([2, 4, 1], 0.5),
        duration_pred=tf.zeros([2, 5]),
        pitch_output=tf.zeros([2, 4, 1]),
    )
    return yt, yp


@pytest.mark.parametrize(
    "key, shape",
    [
        ("stop_tokens", [2, 1]),
        ("stop_tokens", [1, 4]),
        ("stop_tokens", [2, 4, 2]),
        ("mel_lengths", [3]),
        ("pitch_output", [3, 4, 1]),
        ("duration_pred", [2, 7]),
    ],
)
def test_shapes_checked_against_the_mel_batch(key, shape):
    yt, yp = _pair_with_heads()
    XTTSLoss()(yt, yp)  # consistent shapes: fine
    (yt if key in terms.KNOWN_TRUE_KEYS else yp)[key] = tf.zeros(shape)
    with pytest.raises(ValueError, match=key):
        XTTSLoss()(yt, yp)


@pytest.mark.parametrize(
    "key, shape, named",
    [
        ("stop_tokens", [1, 4, 1], r"y_pred\[stop_tokens\] axis 0 \(B\)"),
        ("mel_lengths", [3], r"y_true\[mel_lengths\] axis 0 \(B\)"),
        ("pitch_output", [2, 3, 1], r"y_pred\[pitch_output\] axis 1 \(T\)"),
        ("duration_pred", [2, 7], r"y_pred\[duration_pred\] axis 1 \(U\)"),
        ("mel_output", [2, 5, 3], r"y_pred\[mel_output\] axis 1 \(T\)"),
        (
            "stop_tokens",
            [2, 4, 2],
            r"y_pred\[stop_tokens\] axis 2 is 2, but the size it must have is 1",
        ),
        (
            "duration_pred",
            [2, 1],
            r"y_pred\[duration_pred\] axis 1 \(U\) is 1, but y_true\[duration_target\] axis 1 "
            r"is 5",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["function", "xla"])
def test_shapes_unknown_when_traced_are_checked_by_name(key, shape, named, mode):
    """With every dimension unknown at trace time (input_signature of Nones, as
    reduce_retracing makes them; the MyXTTS trainer's step is also compiled
    with XLA by default), a mismatch is refused when the graph runs (under XLA,
    when it compiles), naming the key and both sizes, never broadcast, and the
    training state is left alone."""
    yt, yp = _pair_with_heads()
    loss_fn = XTTSLoss()

    def spec(d):
        return {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in d.items()}

    call = tf.function(
        lambda a, b: loss_fn(a, b),
        input_signature=[spec(yt), spec(yp)],
        jit_compile=mode == "xla",
    )
    call(yt, yp)  # consistent shapes: fine
    where = yt if key in terms.KNOWN_TRUE_KEYS else yp
    where[key] = tf.zeros(shape, where[key].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
        call(yt, yp)
    assert int(loss_fn.step_count.numpy()) == 1


def test_static_shapes_add_no_run_time_checks():
    """Run-time shape checks exist only where a size is unknown when traced."""
    yt, yp = _pair(0.5)
    yt["stop_target"] = tf.zeros([2, 4, 1])
    yp["stop_tokens"] = tf.fill([2, 4, 1], 0.5)

    def count(a, b):
        # Size pairs compared when the graph runs (one check op holds them all).
        return sum(int(op.inputs[0].shape[0]) for op in terms.check_inputs(a, b))

    assert terms.check_inputs(yt, yp) == []  # eager: the static checks only
    assert int(tf.function(count)(yt, yp)) == 0
    spec = [
        {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in d.items()} for d in (yt, yp)
    ]
    # Against the mel target: B of 4 keys, T of 3, M of 1; and 2 axes that must be 1.
    assert int(tf.function(count, input_signature=spec)(yt, yp)) == 10
    # Under XLA the same pairs, compared when the function compiles.
    assert int(tf.function(count, jit_compile=True, input_signature=spec)(yt, yp)) == 10


@pytest.mark.parametrize("where", ["extra", "norm"])
def test_non_scalar_extra_loss_and_norm_are_named(where):
    yt, yp = _pair(0.5)
    if where == "extra":
        loss_fn = XTTSLoss(extra_losses={"kl": lambda a, b: tf.ones([3])})
        with pytest.raises(ValueError, match=r"extra loss 'kl' must be a scalar, got .*\(3,\)"):
            loss_fn(yt, yp)
    else:
        with pytest.raises(ValueError, match=r"observe_gradient_norm\(norm\) must be a scalar"):
            XTTSLoss().observe_gradient_norm(tf.ones([3]))


def test_none_values_are_refused_by_name():
    yt, yp = _pair(0.5)
    yt["stop_target"] = None
    with pytest.raises(ValueError, match="stop_target"):
        XTTSLoss()(yt, yp)


# ------------------------------------------------------------------ item 9
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(adaptive_weight_min_warmup_steps=10.0), "adaptive_weight_min_warmup_steps"),
        (dict(adaptive_weight_cooling_period=1e20), "adaptive_weight_cooling_period"),
        (dict(adaptive_weight_cooling_period=2**63), "adaptive_weight_cooling_period"),
        (dict(adaptive_weight_min_stable_steps=None), "adaptive_weight_min_stable_steps"),
        (dict(mel_loss_weight=True), "mel_loss_weight"),
        (dict(attention_loss_weight="0.1"), "attention_loss_weight"),
        (dict(pitch_loss_weight=-1.0), "pitch_loss_weight"),
        (dict(contrastive_temperature=0.0), "contrastive_temperature"),
        (dict(stop_from_logits=1), "stop_from_logits"),
        (dict(mel_huber_delta=1e-320), "mel_huber_delta"),
        # A normal float64 that narrows to a flushed subnormal float32 in the op.
        (
            dict(mel_huber_delta=1e-39),
            r"mel_huber_delta must be .* at least 1.1754943508222875e-38",
        ),
        (dict(mel_normalization=None), "mel_normalization"),
        (dict(mel_loss_weigth=2.0), "did you mean mel_loss_weight"),
        (dict(reduction="bogus"), "reduction"),
        (dict(dtype="float16"), "dtype"),
        (dict(verbose="yes"), "verbose"),
        # Finite in float64, inf in the float32 graph (the total would be 0).
        (dict(stop_loss_weight=1e39), r"stop_loss_weight must be finite in float32"),
        (dict(gradient_norm_threshold=-1e39), "gradient_norm_threshold"),
        (dict(adaptive_weight_max_weighted_loss=1e39), "adaptive_weight_max_weighted_loss"),
    ],
)
def test_settings_validated_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        XTTSLoss(**kwargs)


def test_the_smallest_normal_float32_is_a_valid_mel_huber_delta():
    assert XTTSLoss(mel_huber_delta=float(np.finfo(np.float32).tiny)).config.mel_huber_delta > 0


@pytest.mark.parametrize("weight", [1e39, -3.5e38, 1e300])
def test_an_extra_term_weight_beyond_float32_is_refused_by_name(weight):
    """inf in the float32 graph: the term would add 0 and its gradient be 0 * inf = NaN."""
    loss_fn = XTTSLoss()
    with pytest.raises(
        ValueError, match=r"'bonus': weight must be finite in float32 .*" + re.escape(repr(weight))
    ):
        loss_fn.add_loss_term("bonus", lambda yt, yp: tf.constant(1.0), weight)


def test_the_largest_float32_extra_term_weight_keeps_every_gradient_finite():
    loss_fn = XTTSLoss(use_adaptive_weights=False)
    loss_fn.add_loss_term("bonus", lambda yt, yp: tf.reduce_mean(yp["mel_output"]), -3.4e38)
    yt, yp = _pair(0.5)
    pred = tf.Variable(yp["mel_output"])
    with tf.GradientTape() as tape:
        total = loss_fn(yt, dict(yp, mel_output=pred))
    grad = tape.gradient(total, pred).numpy()
    assert np.isfinite(float(total)) and np.all(np.isfinite(grad))


def test_numbers_are_normalised_and_keras_reductions_accepted():
    loss_fn = XTTSLoss(mel_loss_weight=3, adaptive_weight_cooling_period=np.int64(20))
    assert isinstance(loss_fn.config.mel_loss_weight, float)
    assert loss_fn.current_mel_weight.dtype == tf.float32  # not int32 (contract defect 13)
    for reduction in ("sum", "mean", "none", "sum_over_batch_size"):
        value = XTTSLoss(reduction=reduction, dtype="float32")(*_pair(0.5))
        assert float(value) == pytest.approx(1.25)
    assert (
        XTTSLossConfig(adaptive_weight_cooling_period=np.int32(5)).adaptive_weight_cooling_period
        == 5
    )


def _empty_term_cases(rng):
    b, t, m, u = 2, 6, 4, 5
    mel_t = rng.normal(size=(b, t, m)).astype(np.float32)
    mel_p = rng.normal(size=(b, t, m)).astype(np.float32)
    stop_t = np.zeros((b, t, 1), np.float32)
    stop_p = rng.uniform(0.1, 0.9, (b, t, 1)).astype(np.float32)
    dur_t = rng.uniform(0, 5, (b, u)).astype(np.float32)
    dur_p = rng.uniform(0, 5, (b, u)).astype(np.float32)
    return {
        # mel lengths all 0: the mel term counts nothing; duration does.
        "mel_empty": (
            {
                "mel_target": mel_t,
                "mel_lengths": np.zeros([b], np.int32),
                "duration_target": dur_t,
                "text_lengths": np.array([5, 3], np.int32),
            },
            {"mel_output": mel_p, "duration_pred": dur_p},
            "duration_pred",
        ),
        # a diverged mel head (all NaN) beside a healthy stop term
        "mel_all_nan": (
            {"mel_target": mel_t, "mel_lengths": np.array([6, 3], np.int32), "stop_target": stop_t},
            {"mel_output": np.full_like(mel_p, np.nan), "stop_tokens": stop_p},
            "stop_tokens",
        ),
        # no lengths, every stop probability NaN, the mel term fine
        "stop_all_nan": (
            {"mel_target": mel_t, "stop_target": stop_t},
            {"mel_output": mel_p, "stop_tokens": np.full_like(stop_p, np.nan)},
            "mel_output",
        ),
    }


@pytest.mark.parametrize("case", ["mel_empty", "mel_all_nan", "stop_all_nan"])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_a_term_with_nothing_to_count_adds_zero_and_keeps_the_others(case, mode):
    """A term whose denominator is 0 (no valid or no finite element) adds 0; the
    returned total is the other terms' (equal to raw_total_loss), and they keep
    their gradients (COMPAT 3.12, 8.6)."""
    y_true, y_pred, key = _empty_term_cases(np.random.default_rng(3))[case]
    loss_fn = XTTSLoss()
    y_pred = {k: tf.constant(v) for k, v in y_pred.items()}

    def step(y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred[key])
            total = loss_fn(y_true, y_pred)
        return total, tape.gradient(total, y_pred[key])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    total, grad = step(y_pred)
    weighted = loss_fn.get_weighted_losses()
    terms_sum = sum(
        float(v) for k, v in weighted.items() if k not in ("mel_weight", "raw_total_loss")
    )
    assert float(total) > 0.0
    assert float(total) == pytest.approx(float(weighted["raw_total_loss"]), rel=1e-6)
    assert float(total) == pytest.approx(terms_sum, rel=1e-5)
    assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", [tf.int32, tf.float32])
def test_length_bound_holds_in_the_stand_in_checks(monkeypatch, mode, dtype):
    """Where the length check's op cannot run, TensorFlow's stand-in checks
    apply the same bound: an error eagerly and in graphs; under XLA, where
    nothing can refuse, the entry counts as 0 (the terms' masks' invalid)."""
    monkeypatch.setattr(terms, "length_check_available", lambda: False)
    bounds = [("duration", tf.zeros([2, 5]), 1)]

    def fn(n):
        return terms.as_lengths(n, "text_lengths", bounds)

    call = fn if mode == "eager" else tf.function(fn, jit_compile=mode == "xla")
    np.testing.assert_array_equal(call(tf.constant([2, 5], dtype)).numpy(), [2, 5])
    bad = tf.constant([2, 6], dtype)
    if mode == "xla":
        np.testing.assert_array_equal(call(bad).numpy(), [2, 0])
        return
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=r"text_lengths must be integers in \[0, 5\]"):
        call(bad)


# A prediction and a target whose sizes differ where one is 1 (or the batch is
# 1) broadcast into each other in the term math: each module function refuses
# them, naming both arguments.
_MODULE_BROADCASTS = [
    (
        lambda a, b: terms.pitch_loss(a, b),
        [3, 6],
        [3, 1],
        r"target_pitch .*axis 1 \(T\) is 1, but predicted_pitch",
    ),
    (
        lambda a, b: terms.energy_loss(a, b),
        [3, 6],
        [1, 6],
        r"target_energy .*axis 0 \(B\) is 1, but predicted_energy",
    ),
    (
        lambda a, b: terms.duration_loss(a, b, [6, 5, 4]),
        [3, 6],
        [3, 1],
        r"target_durations .*axis 1 \(U\) is 1, but predicted_durations",
    ),
    (
        lambda a, b: terms.speaking_rate_loss(a, b, [6, 5, 4]),
        [3, 6, 1],
        [3, 1, 1],
        r"target_rate .*axis 1 \(U\) is 1, but predicted_rate",
    ),
    (
        lambda a, b: terms.diffusion_loss(a, b),
        [3, 6, 4],
        [3, 6, 1],
        r"target_noise .*axis 2 \(C\) is 1, but predicted_noise",
    ),
    (
        lambda a, b: terms.stop_token_loss(b, a),
        [3, 6, 1],
        [3, 1, 1],
        r"y_pred .*axis 1 \(T\) is 6, but y_true",
    ),
    (
        lambda a, b: terms.mel_loss(b, a, [6, 5, 4]),
        [3, 6, 4],
        [3, 6, 1],
        r"y_pred .*axis 2 \(M\) is 4, but y_true",
    ),
]


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("fn, pred_shape, target_shape, named", _MODULE_BROADCASTS)
def test_module_functions_refuse_shapes_that_would_broadcast(
    fn, pred_shape, target_shape, named, mode
):
    """Statically a ValueError; with sizes unknown when traced, the check op
    when the graph runs (under XLA, when it compiles): never a number."""
    pred = tf.fill(pred_shape, 0.5)
    target = tf.fill(target_shape, 0.25)
    if mode == "eager":
        with pytest.raises(ValueError, match=named):
            fn(pred, target)
        return
    specs = [tf.TensorSpec([None] * len(s)) for s in (pred_shape, target_shape)]
    call = tf.function(fn, jit_compile=mode == "xla", input_signature=specs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=named.replace(" .*axis", " axis")):
        call(pred, target)
    assert np.isfinite(float(call(pred, tf.fill(pred_shape, 0.25))))  # same shapes: fine


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_module_mel_loss_checks_the_lengths_batch_before_the_noise(mode):
    """terms.mel_loss refuses lengths of another batch size naming them, on
    every path, before the target noise (whose std would broadcast them)."""
    fn = lambda t, p: terms.mel_loss(t, p, [4, 3, 2])  # noqa: E731
    if mode != "eager":
        spec = tf.TensorSpec([None, None, None])
        fn = tf.function(fn, jit_compile=mode == "xla", input_signature=[spec, spec])
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=r"lengths .*axis 0 \(B\) is 3, but y_true"):
        fn(tf.zeros([2, 4, 3]), tf.ones([2, 4, 3]))


def test_diffusion_channels_must_agree():
    yt, yp = _pair(0.5)
    yt["diffusion_noise_target"] = tf.zeros([2, 4, 7])
    yp["diffusion_noise_pred"] = tf.zeros([2, 4, 8])
    with pytest.raises(ValueError, match=r"y_pred\['diffusion_noise_pred'\].*axis 2 \(C\) is 8"):
        XTTSLoss()(yt, yp)
    yp["diffusion_noise_pred"] = tf.zeros([2, 4, 7])  # channels need not be the mel bins
    assert np.isfinite(float(XTTSLoss()(yt, yp)))


@pytest.mark.parametrize(
    "key",
    ["mel_lens", "lengths", "frame_lengths", "mel_len", "frameLens", "ilens", "seqlen", "mel_len2"],
)
def test_lengths_under_another_name_are_refused(key):
    """Lengths under an unknown y_true name would be ignored (every frame,
    padding included, would count): refused, naming the known length keys."""
    yt, yp = _pair(0.5)
    yt[key] = yt.pop("mel_lengths")
    with pytest.raises(
        ValueError, match=rf"unknown y_true key '{key}': lengths go in 'mel_lengths'"
    ):
        XTTSLoss()(yt, yp)


@pytest.mark.parametrize("key", ["silence_mask", "valence_target", "filename", "lenient"])
def test_extra_targets_with_len_inside_a_word_are_left_alone(key):
    """Only a key that names lengths by a word of its own is refused: other
    targets a pipeline carries are left alone, as every unknown key is."""
    yt, yp = _pair(0.5)
    yt[key] = tf.zeros([2])
    assert np.isfinite(float(XTTSLoss()(yt, yp)))


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint8", "uint16", "uint32"])
def test_small_integer_lengths(dtype):
    """Any integer dtype up to int64 works as lengths (exact), and a bad value is
    named as for int32; uint64, which could pass int64, is refused by dtype."""
    yt, yp = _pair(0.5)
    expected = float(XTTSLoss()(yt, yp))
    yt["mel_lengths"] = tf.constant([4, 3], dtype)
    assert float(XTTSLoss()(yt, yp)) == expected
    yt["mel_lengths"] = tf.constant([9, 3], dtype)
    with pytest.raises(ValueError, match=r"mel_lengths\[0\] = 9 is outside \[0, 4\]"):
        XTTSLoss()(yt, yp)
    yt["mel_lengths"] = tf.constant([4, 3], tf.uint64)
    with pytest.raises(ValueError, match="mel_lengths must be integer .* got dtype uint64"):
        XTTSLoss()(yt, yp)


def test_float32_range_settings_accepted_and_huber_delta_is_float64():
    loss_fn = XTTSLoss(stop_loss_weight=3.4e38, adaptive_weight_max_weighted_loss=3.4e38)
    assert loss_fn.config.stop_loss_weight == 3.4e38
    # The fused op takes the Huber threshold as a float64: 1e300 (inf in
    # float32) leaves every element in the quadratic part, 0.5 d^2.
    loss_fn = XTTSLoss(mel_loss_type="huber", mel_huber_delta=1e300)
    rng = np.random.default_rng(7)
    yt = rng.standard_normal((2, 5, 3)) * 10
    yp = rng.standard_normal((2, 5, 3)) * 10
    lengths = np.array([5, 2])
    loss_fn({"mel_target": yt, "mel_lengths": lengths}, {"mel_output": yp})
    per_sample = [np.mean(0.5 * (yp[b, :n] - yt[b, :n]) ** 2) for b, n in enumerate(lengths)]
    np.testing.assert_allclose(
        float(loss_fn.get_losses()["mel_loss"]), np.mean(per_sample), rtol=1e-6
    )


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_gradient_norm_of_half_and_mixed_gradients(mode):
    """A list's norm is squared in float32 at least: float16 gradients of norm
    300 (whose squares overflow float16) are recorded as 300, not dropped as
    non-finite; float16 and float32 gradients mix; IndexedSlices count their
    values."""
    loss_fn = XTTSLoss()

    def observe(a, b, c):
        sparse = tf.IndexedSlices(c, tf.constant([0, 2]), tf.constant([4]))
        return loss_fn.observe_gradient_norm([a, None, b, sparse])

    fn = observe if mode == "eager" else tf.function(observe, jit_compile=mode == "xla")
    got = fn(tf.constant([300.0], tf.float16), tf.constant([400.0]), tf.constant([0.0, 0.0]))
    assert float(got) == 500.0
    got = fn(
        tf.constant([3.0], tf.bfloat16), tf.constant([0.0]), tf.constant([4.0, 12.0], tf.float64)
    )
    assert float(got) == 13.0
    assert loss_fn.gradient_norm_history().numpy().tolist() == [500.0, 13.0]
    assert int(loss_fn._state.nonfinite_gradient_norms.numpy()) == 0


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_gradient_norm_of_exploding_gradients_is_finite(mode, rng):
    """An exploding but finite gradient (float32 elements past 1.8e19, whose
    squares overflow) records its norm, against float64 NumPy; an inf element
    still gives a non-finite norm, ignored and counted."""
    loss_fn = XTTSLoss()
    observe = loss_fn.observe_gradient_norm
    fn = observe if mode == "eager" else tf.function(observe, jit_compile=mode == "xla")
    big = (rng.normal(size=[5, 3]) * 1e20).astype(np.float32)
    small = rng.normal(size=[7]).astype(np.float32)
    half = rng.normal(size=[4]).astype(np.float16)
    want = np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in (big, small, half)))
    got = fn([tf.constant(big), tf.constant(small), tf.zeros([0]), tf.constant(half)])
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    big[1, 2] = np.inf
    assert float(fn([tf.constant(big), tf.constant(small)])) == np.inf
    np.testing.assert_allclose(loss_fn.gradient_norm_history().numpy(), [want], rtol=1e-6)
    assert int(loss_fn._state.nonfinite_gradient_norms.numpy()) == 1


def test_invalid_gradient_norms():
    """A negative norm is ignored and counted like a non-finite one (it would
    drag the mean of the previous norms down); a list without gradients
    records nothing; a norm that is not a real number is a ValueError naming
    the method."""
    loss_fn = XTTSLoss()
    loss_fn.observe_gradient_norm(2.0)
    loss_fn.observe_gradient_norm(-7.0)
    assert loss_fn.observe_gradient_norm([]) is None
    assert loss_fn.observe_gradient_norm([None, None]) is None
    assert loss_fn.gradient_norm_history().numpy().tolist() == [2.0]
    assert int(loss_fn._state.nonfinite_gradient_norms.numpy()) == 1
    for bad in ("large", None, tf.constant("x"), tf.constant(True)):
        with pytest.raises(ValueError, match=r"observe_gradient_norm\(norm\) takes a real scalar"):
            loss_fn.observe_gradient_norm(bad)


# ------------------------------------------------------------------ inputs no term can read
def _mel_pair(b=2, t=4, m=3):
    return {"mel_target": tf.zeros([b, t, m])}, {"mel_output": tf.ones([b, t, m])}


def _bad_inputs(case):
    """(y_true, y_pred, message) for one input no term can read as it is."""
    yt, yp = _mel_pair()
    if case == "complex":
        yp["mel_output"] = tf.complex(tf.ones([2, 4, 3]), tf.ones([2, 4, 3]))
        return yt, yp, r"y_pred\['mel_output'\] must hold real numbers .* got complex64"
    if case == "string":
        yt["pitch_target"], yt["mel_lengths"] = tf.ones([2, 4, 1]), tf.constant([4, 3])
        yp["pitch_output"] = tf.fill([2, 4, 1], "a")
        return yt, yp, r"y_pred\['pitch_output'\] must hold real numbers .* got string"
    if case == "bool":
        yt["stop_target"] = tf.zeros([2, 4, 1], tf.bool)
        yp["stop_tokens"] = tf.fill([2, 4, 1], 0.5)
        return yt, yp, r"y_true\['stop_target'\] must hold real numbers .* got bool"
    if case == "no_heads":
        yt["mel_lengths"], yt["text_lengths"] = tf.constant([4, 3]), tf.constant([5, 5])
        yp["attention_weights"] = tf.zeros([2, 0, 4, 5])
        return yt, yp, r"y_pred\['attention_weights'\] has shape \(2, 0, 4, 5\): its axis 1 \(H"
    raise AssertionError(case)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("case", ["complex", "string", "bool", "no_heads"])
def test_inputs_no_term_can_read_are_refused(case, mode):
    """A complex input (a cast would drop its imaginary part and give a number),
    a string or bool one, and attention weights over no heads (a NaN mean for
    every pair, the term silently 0) are ValueErrors naming the input, on every
    path, before any state is written."""
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    yt, yp, message = _bad_inputs(case)
    before = _state_snapshot(loss_fn)
    with pytest.raises(ValueError, match=message):
        call(yt, yp)
    _assert_state_unchanged(loss_fn, before, mode)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_tuples_for_y_true_and_y_pred_are_refused(mode):
    """A tuple is neither MyXTTS's dict nor one mel tensor: eagerly it would
    stack into a tensor of another shape, traced it failed converting symbolic
    tensors. Both paths name what was passed."""
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    yt, yp = _mel_pair()
    pair = (yt["mel_target"], yt["mel_target"]), (yp["mel_output"], yp["mel_output"])
    with pytest.raises(ValueError, match=r"y_true must be a dict of tensors .* got a tuple"):
        call(*pair)


@pytest.mark.parametrize("kind", ["ragged", "sparse"])
def test_ragged_and_sparse_inputs_are_refused(kind):
    ragged = tf.ragged.constant([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]], ragged_rank=1)
    value = ragged if kind == "ragged" else ragged.to_sparse()
    name = "RaggedTensor" if kind == "ragged" else "SparseTensor"
    with pytest.raises(
        ValueError, match=rf"y_true\['mel_target'\] must be a dense tensor, got a {name}"
    ):
        XTTSLoss()({"mel_target": value}, {"mel_output": tf.zeros([2, 2, 2])})


def test_an_input_of_unknown_rank_is_refused_naming_it():
    """A rank hidden from tracing (an input_signature without shapes) used to
    fail inside a term with a TypeError naming nothing; it is refused when the
    step is traced, naming the input."""
    yt = {"duration_target": tf.ones([2, 5]), "text_lengths": tf.constant([5, 3])}
    yp = {"duration_pred": tf.zeros([2, 5])}
    signature = [
        {k: tf.TensorSpec(v.shape, v.dtype) for k, v in yt.items()},
        {"duration_pred": tf.TensorSpec(None)},
    ]
    loss_fn = XTTSLoss()
    step = tf.function(lambda a, b: loss_fn(a, b), input_signature=signature)
    with pytest.raises(ValueError, match=r"y_pred\['duration_pred'\] has a rank unknown when"):
        step(yt, yp)
    known = [signature[0], {"duration_pred": tf.TensorSpec([None, None])}]
    got = tf.function(lambda a, b: loss_fn(a, b), input_signature=known)(yt, yp)
    assert np.isfinite(float(got))


def test_mel_lengths_given_twice_are_refused():
    """The mel_lengths argument used to replace y_true['mel_lengths'] silently."""
    yt, yp = _mel_pair()
    yt["mel_lengths"] = tf.constant([4, 3])
    loss_fn = XTTSLoss()
    with pytest.raises(ValueError, match=r"mel lengths given twice"):
        loss_fn(yt, yp, mel_lengths=tf.constant([1, 1]))
    mel_only = {"mel_target": yt["mel_target"]}
    assert float(loss_fn(mel_only, yp, mel_lengths=tf.constant([4, 3]))) == float(
        XTTSLoss()(yt, yp)
    )


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize(
    "labels, shown",
    [
        ([np.nan, np.nan, 1.0], "nan is not a whole number"),
        ([np.inf, -np.inf, 1.0], "inf is not a whole number"),
        ([0.4, 0.6, 1.0], "0.4 is not a whole number"),
        ([-1.0, 2.0, 1.0], "-1 is outside"),
    ],
    ids=["nan", "inf", "fraction", "negative"],
)
def test_float_speaker_labels_must_be_ids(labels, shown, mode):
    """Float speaker labels (Keras casts y_true to float32) must be whole
    numbers in [0, 2**31 - 1]: a cast merged NaNs or infinities into one
    speaker (and differently under XLA) and rounded 0.4 and 0.6 silently.
    Whole-number labels give the value of the same integer ids."""
    emb = tf.random.stateless_normal([3, 4], [1, 2])
    loss_fn = XTTSLoss()
    call = _in_mode(loss_fn, mode)
    want = float(XTTSLoss()({"speaker_labels": tf.constant([7, 8, 1])}, {"speaker_embedding": emb}))
    got = call({"speaker_labels": tf.constant([7.0, 8.0, 1.0])}, {"speaker_embedding": emb})
    assert float(got) == want
    error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=rf"speaker_labels\[0\] = {re.escape(shown)}"):
        call({"speaker_labels": tf.constant(labels)}, {"speaker_embedding": emb})


_REAL = tf.fill([2, 4, 1], 0.5)
_COMPLEX = tf.complex(_REAL, 100.0 * tf.ones_like(_REAL))


@pytest.mark.parametrize(
    "fn, args, name",
    [
        (terms.mel_loss, (_REAL, _COMPLEX), "y_pred"),
        (terms.stop_token_loss, (_COMPLEX, _REAL), "y_true"),
        (terms.pitch_loss, (_COMPLEX, _REAL), "predicted_pitch"),
        (terms.duration_loss, (_REAL[..., 0], _COMPLEX[..., 0], [4, 2]), "target_durations"),
        (terms.diffusion_loss, (_COMPLEX, _REAL), "predicted_noise"),
    ],
    ids=["mel", "stop", "pitch", "duration", "diffusion"],
)
def test_module_functions_refuse_complex_inputs(fn, args, name):
    """The module functions read their arguments as XTTSLoss reads its inputs:
    a complex one (whose imaginary part a cast would drop, giving 0.0) is a
    ValueError naming the argument."""
    with pytest.raises(ValueError, match=rf"^{name} must hold real numbers .* got complex64"):
        fn(*args)


def test_module_attention_loss_refuses_no_heads():
    """The module function reads attention weights through the same shape
    check as XTTSLoss: over no heads it is a ValueError, not a silent 0."""
    with pytest.raises(
        ValueError, match=r"^attention_weights has shape \(2, 0, 4, 5\): its axis 1 \(H\) must be"
    ):
        terms.attention_loss(tf.zeros([2, 0, 4, 5]), tf.constant([5, 5]), tf.constant([4, 4]))


def test_savedmodel_holding_the_loss_saves_loads_and_resumes(tmp_path):
    """tf.saved_model.save traces the settings record's restore into a graph:
    it used to fail there (a symbolic tensor converted to NumPy). The loaded
    module's loss resumes from the saved state."""
    myxtts_ops.load_ops()

    class Step(tf.Module):
        def __init__(self):
            self.loss = XTTSLoss()

        @tf.function(input_signature=[tf.TensorSpec([2, 6, 4]), tf.TensorSpec([2, 6, 4])])
        def __call__(self, target, output):
            yt = {"mel_target": target, "mel_lengths": tf.constant([6, 3])}
            return self.loss(yt, {"mel_output": output})

    rng = np.random.default_rng(5)
    pairs = [
        tuple(tf.constant(rng.standard_normal((2, 6, 4)), tf.float32) for _ in range(2))
        for _ in range(3)
    ]
    module = Step()
    module(*pairs[0])
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    for target, output in pairs[1:]:
        assert float(loaded(target, output)) == float(module(target, output))


def test_settings_check_in_a_graph_restore_refuses_other_settings():
    from myxtts_loss.state import SettingsRecord

    record = SettingsRecord(XTTSLoss(mel_loss_weight=2.0).config)

    @tf.function
    def restore(value):
        record._restore_from_tensors({"settings": value})  # noqa: SLF001 - an Assert, run

    restore(tf.constant(record._values()))  # noqa: SLF001 - the same settings pass
    other = SettingsRecord(XTTSLoss().config)._values()  # noqa: SLF001
    with pytest.raises(tf.errors.InvalidArgumentError, match="mel_loss_weight"):
        restore(tf.constant(other))
    with pytest.raises(tf.errors.InvalidArgumentError, match="other settings"):
        restore(tf.constant([1.0]))
