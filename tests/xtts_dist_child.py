"""Subprocess body for tests/test_distribution.py and tests/test_resume.py.

``python xtts_dist_child.py MODE OUT_JSON [options]``; writes a JSON result.
Logical CPU devices must be configured before TensorFlow initialises, so the
distribution tests run here, in a fresh process, never in the pytest process.

Modes:

* ``mirrored``: 2 logical CPUs; drives XTTSLoss for ``--steps`` global batches
  once on a single device and once under ``MirroredStrategy`` (2 replicas,
  half of each global batch per replica); records, per step, every replica's
  weight, op state and returned value; then the gradient of a tiny model
  (single device vs SUM over replicas) and the recorded gradient norm.
* ``keras``: 2 logical CPUs; ``model.fit`` of a tiny XTTSModel for a few steps
  on a single device and under ``MirroredStrategy``; final model weights, loss
  state, logged losses.
* ``worker``: one MultiWorkerMirroredStrategy worker (TF_CONFIG from the
  environment); runs the same global batches, writes its state.
* ``single``: the single-device run only (reference for the workers).
* ``resume``: ``--start``/``--stop`` steps with checkpoint restore/save
  (``--restore DIR``, ``--save DIR``).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

GLOBAL_B, T, M = 4, 6, 3
LENGTHS = np.array([6, 4, 5, 3], np.int32)
# Per-sample factors: the replicas' shards have different losses (replica 0:
# mean 0.6 x base, replica 1: 1.4 x base), the global mean is the base.
FACTORS = np.array([0.4, 0.8, 1.2, 1.6], np.float32)
NAN_STEP = 30  # a NaN in sample 3 (replica 1's shard) only
SPIKE_STEP = 150  # sample 3 x50 (replica 1 only): a spike of the global total


def base_loss(step):
    return 0.3 if step % 2 else 1.0


def global_batch(step):
    """(y_true dict, y_pred dict) of the global batch of ``step`` (1-based)."""
    f = FACTORS.copy()
    if step == SPIKE_STEP:
        f[3] *= 50.0
    yp = np.broadcast_to((base_loss(step) * f)[:, None, None], (GLOBAL_B, T, M)).copy()
    if step == NAN_STEP:
        yp[3, 0, 1] = np.nan
    yt = np.zeros_like(yp)
    stop_t = (np.arange(T)[None, :] >= (LENGTHS[:, None] - 1)).astype(np.float32)
    stop_p = (np.linspace(-2, 2, T)[None, :] * (1 + 0.1 * np.arange(GLOBAL_B)[:, None])).astype(
        np.float32
    )
    stop_p = stop_p + 0.01 * (step % 7)
    return (
        {"mel_target": yt, "mel_lengths": LENGTHS.copy(), "stop_target": stop_t},
        {"mel_output": yp.astype(np.float32), "stop_tokens": stop_p},
    )


def make_loss(normalization="per_sample", extra=True):
    import tensorflow as tf

    from myxtts.training.losses import XTTSLoss

    extras = None
    if extra:
        # A per-sample-mean extra term (equal per-replica batches: the mean of
        # the replicas' means is the global mean).
        def mel_l2(yt, yp):
            x = yp["mel_output"]
            x = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
            return 1e-3 * tf.reduce_mean(tf.square(x))

        extras = {"mel_l2": (mel_l2, 0.5)}
    return XTTSLoss(mel_normalization=normalization, extra_losses=extras)


def state_dict(loss_fn, values=None):
    """{variable name: list} of every state variable (``values`` overrides reads)."""
    out = {}
    for v in loss_fn.state_variables:
        x = (values or {}).get(v.name)
        if x is None:
            x = v.numpy()
        out[v.name] = np.asarray(x).tolist()
    return out


def gradient_norm(step):
    """A deterministic gradient-norm sequence with surges (for the resume runs)."""
    return 20.0 if step % 37 == 0 else 1.0 + 0.1 * (step % 5)


def run_single(loss_fn, steps, start=1, norms=False):
    import tensorflow as tf

    step_fn = tf.function(lambda yt, yp: loss_fn(yt, yp))
    observe = tf.function(loss_fn.observe_gradient_norm)
    rec = []
    for s in range(start, steps + 1):
        yt, yp = global_batch(s)
        total = float(step_fn(yt, yp))
        if norms:
            observe(tf.constant(gradient_norm(s), tf.float32))
        rec.append(
            dict(
                step=s,
                total=total,
                weight=float(loss_fn.current_mel_weight.numpy()),
                op_state=loss_fn._state.op_state.numpy().tolist(),
            )
        )
    return rec


def shard(batch, rid, n):
    import tensorflow as tf

    per = GLOBAL_B // n
    return tf.nest.map_structure(lambda x: x[rid * per : (rid + 1) * per], batch)


def run_strategy(strategy, loss_fn, steps, worker_index=0, num_workers=1, eager=False):
    """Drive ``loss_fn`` under ``strategy``; each replica gets its slice of the global
    batch. ``eager``: ``strategy.run`` without ``tf.function`` (replicas are threads)."""
    import tensorflow as tf

    n = strategy.num_replicas_in_sync

    def step(yt, yp):
        def replica_fn(yt, yp):
            ctx = tf.distribute.get_replica_context()
            rid = ctx.replica_id_in_sync_group
            per = GLOBAL_B // n
            sl = lambda x: x[rid * per : (rid + 1) * per]  # noqa: E731
            return loss_fn(tf.nest.map_structure(sl, yt), tf.nest.map_structure(sl, yp))

        return strategy.run(replica_fn, args=(yt, yp))

    if not eager:
        step = tf.function(step)
    rec = []
    for s in range(1, steps + 1):
        yt, yp = global_batch(s)
        values = strategy.experimental_local_results(step(yt, yp))
        rec.append(
            dict(
                step=s,
                totals=[float(v) * n for v in values],
                weights=[
                    float(v)
                    for v in strategy.experimental_local_results(loss_fn.current_mel_weight)
                ],
                op_states=[
                    np.asarray(v).tolist()
                    for v in strategy.experimental_local_results(loss_fn._state.op_state)
                ],
            )
        )
    replicas = {}
    for v in loss_fn.state_variables:
        replicas[v.name] = [np.asarray(x).tolist() for x in strategy.experimental_local_results(v)]
    return rec, replicas


def tiny_model_grads(strategy, normalization):
    """Gradient of a tiny model: single device vs SUM over the replicas."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    x = rng.standard_normal((GLOBAL_B, T, 2)).astype(np.float32)
    yt, _ = global_batch(3)
    yt["mel_target"] = rng.standard_normal((GLOBAL_B, T, M)).astype(np.float32)
    w0 = rng.standard_normal((2, M)).astype(np.float32)
    s0 = rng.standard_normal((2, 1)).astype(np.float32)

    def forward(wm, ws, xb):
        return {
            "mel_output": tf.einsum("btk,km->btm", xb, wm),
            "stop_tokens": tf.einsum("btk,km->btm", xb, ws),
        }

    # Single device.
    loss1 = make_loss(normalization)
    wm1, ws1 = tf.Variable(w0), tf.Variable(s0)
    with tf.GradientTape() as tape:
        total1 = loss1(yt, forward(wm1, ws1, x))
    g1 = tape.gradient(total1, [wm1, ws1])
    norm1 = float(loss1.observe_gradient_norm(g1))

    with strategy.scope():
        loss2 = make_loss(normalization)
        wm2, ws2 = tf.Variable(w0), tf.Variable(s0)
    n = strategy.num_replicas_in_sync

    @tf.function
    def dist_step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            per = GLOBAL_B // n
            sl = lambda a: tf.convert_to_tensor(a)[rid * per : (rid + 1) * per]  # noqa: E731
            with tf.GradientTape() as tape:
                total = loss2(tf.nest.map_structure(sl, yt), forward(wm2, ws2, sl(x)))
            grads = tape.gradient(total, [wm2, ws2])
            norm = loss2.observe_gradient_norm(grads)
            return total, grads, norm

        total, grads, norm = strategy.run(replica_fn)
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
            [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads],
            strategy.experimental_local_results(norm),
        )

    total2, g2, norms2 = dist_step()
    return dict(
        total_single=float(total1),
        total_dist=float(total2),
        grads_single=[g.numpy().tolist() for g in g1],
        grads_dist=[g.numpy().tolist() for g in g2],
        norm_single=norm1,
        norms_dist=[float(v) for v in norms2],
        grad_history_replicas=[
            np.asarray(v).tolist()
            for v in strategy.experimental_local_results(loss2._state.gradient_norms)
        ],
    )


def mode_contrastive(args):
    """The voice-similarity (contrastive speaker) term, whose pairs span the
    global batch: single device vs a 2-CPU MirroredStrategy, where every
    positive pair (labels 0 1 0 1, split 2 + 2) crosses the replicas. Two steps;
    the second has a NaN embedding row in replica 1's shard."""
    import tensorflow as tf

    from myxtts_loss import terms
    from myxtts_loss.terms import contrastive_speaker_loss

    devices = configure_two_cpus()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((GLOBAL_B, 3)).astype(np.float32)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    labels = np.array([0, 1, 0, 1], np.int32)
    index = terms.TERM_NAMES.index("voice_similarity_loss")

    def batch(step):
        yt, yp = global_batch(step)
        yt["speaker_labels"] = labels
        xb = x.copy()
        if step == 2:
            xb[3, 1] = np.nan
        return yt, yp, xb

    def predict(w, yp, xb):
        return dict(yp, speaker_embedding=tf.matmul(xb, w))

    single_loss = make_loss(extra=False)
    w1 = tf.Variable(w0)
    single = []
    for step in (1, 2):
        yt, yp, xb = batch(step)
        with tf.GradientTape() as tape:
            total = single_loss(yt, predict(w1, yp, xb))
        grad = tape.gradient(total, w1)
        single.append(
            dict(
                total=float(total),
                grad=grad.numpy().tolist(),
                term=float(single_loss._state.last_terms.numpy()[index]),
                module=float(contrastive_speaker_loss(labels, tf.matmul(xb, w1))),
            )
        )

    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    with strategy.scope():
        dist_loss = make_loss(extra=False)
        w2 = tf.Variable(w0)
    n = strategy.num_replicas_in_sync

    @tf.function
    def dist_step(yt, yp, xb):
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            per = GLOBAL_B // n
            sl = lambda a: tf.convert_to_tensor(a)[rid * per : (rid + 1) * per]  # noqa: E731
            yt_r, yp_r, xb_r = (tf.nest.map_structure(sl, v) for v in (yt, yp, xb))
            with tf.GradientTape() as tape:
                total = dist_loss(yt_r, predict(w2, yp_r, xb_r))
            grad = tape.gradient(total, w2)
            module = contrastive_speaker_loss(yt_r["speaker_labels"], tf.matmul(xb_r, w2))
            return total, grad, module

        total, grad, module = strategy.run(replica_fn)
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None),
            strategy.experimental_local_results(module),
        )

    dist = []
    for step in (1, 2):
        total, grad, module = dist_step(*batch(step))
        dist.append(
            dict(
                total=float(total),
                grad=grad.numpy().tolist(),
                terms=[
                    float(np.asarray(v)[index])
                    for v in strategy.experimental_local_results(dist_loss._state.last_terms)
                ],
                module=[float(v) for v in module],
            )
        )
    return dict(num_replicas=n, single=single, dist=dist)


def mode_preset(args):
    """The original's preset (target noise of 0.05 x the target std): single
    device vs a 2-CPU MirroredStrategy (split 2 + 2) on random targets, three
    steps, so the std is the global batch's and each replica adds the noise
    rows of its own samples; one sample is empty. Per step: the total, the mel
    term and the running mel loss."""
    import tensorflow as tf

    from myxtts.training.losses import XTTSLoss
    from myxtts_loss import terms
    from myxtts_ops import state as layout

    devices = configure_two_cpus()
    rng = np.random.default_rng(5)
    index = terms.TERM_NAMES.index("mel_loss")
    batches = []
    for _ in range(3):
        yt, yp = global_batch(1)
        # Different scales per shard: a shard-only std would differ from the global one.
        scale = np.array([0.5, 0.5, 3.0, 3.0], np.float32)[:, None, None]
        yt["mel_target"] = (rng.standard_normal((GLOBAL_B, T, M)) * scale).astype(np.float32)
        # An empty sample: the term's mean is over all B, the op's over the others.
        yt["mel_lengths"] = np.array([6, 4, 0, 3], np.int32)
        batches.append((yt, yp))

    single_loss = XTTSLoss.myxtts_original()
    single = []
    for yt, yp in batches:
        total = float(single_loss(yt, yp))
        single.append(
            dict(
                total=total,
                mel=float(single_loss._state.last_terms.numpy()[index]),
                running_mel=float(single_loss.get_stability_metrics()["running_mel_loss"]),
            )
        )

    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    with strategy.scope():
        dist_loss = XTTSLoss.myxtts_original()
    n = strategy.num_replicas_in_sync

    @tf.function
    def dist_step(yt, yp):
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            per = GLOBAL_B // n
            sl = lambda a: tf.convert_to_tensor(a)[rid * per : (rid + 1) * per]  # noqa: E731
            return dist_loss(*(tf.nest.map_structure(sl, v) for v in (yt, yp)))

        return strategy.run(replica_fn)

    dist = []
    for yt, yp in batches:
        totals = strategy.experimental_local_results(dist_step(yt, yp))
        mels = strategy.experimental_local_results(dist_loss._state.last_terms)
        op_states = strategy.experimental_local_results(dist_loss._state.op_state)
        dist.append(
            dict(
                total=float(sum(float(t) for t in totals)),
                mel=[float(m.numpy()[index]) for m in mels],
                running_mel=[float(s.numpy()[layout.RUNNING_MEAN]) for s in op_states],
            )
        )
    return dict(num_replicas=n, single=single, dist=dist)


def configure_two_cpus():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.config.list_logical_devices("CPU")


def _single_and_mirrored(args, eager=False):
    """The single-device run and the same steps under a 2-CPU MirroredStrategy
    (``eager``: ``strategy.run`` without tf.function): (strategy, result dict)."""
    import tensorflow as tf

    devices = configure_two_cpus()
    single = make_loss(args.normalization)
    rec_single = run_single(single, args.steps)
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    with strategy.scope():
        dist = make_loss(args.normalization)
    rec_dist, replicas = run_strategy(strategy, dist, args.steps, eager=eager)
    return strategy, dict(
        num_replicas=strategy.num_replicas_in_sync,
        single=rec_single,
        dist=rec_dist,
        single_state=state_dict(single),
        replica_states=replicas,
    )


def mode_mirrored(args):
    strategy, result = _single_and_mirrored(args)
    return dict(result, grads=tiny_model_grads(strategy, args.normalization))


def mode_mirrored_eager(args):
    """Eager ``strategy.run`` (no tf.function) against a single device, and a loss
    built outside the strategy's scope (refused by name)."""
    strategy, result = _single_and_mirrored(args, eager=True)
    outside = make_loss(args.normalization)
    try:
        run_strategy(strategy, outside, 1)
        outside_error = None
    except ValueError as exc:
        outside_error = str(exc)
    return dict(result, outside_error=outside_error, outside_steps=int(outside.step_count.numpy()))


# ------------------------------------------------------------------ keras
def keras_data(steps):
    rng = np.random.default_rng(11)
    n = GLOBAL_B * steps
    x = rng.standard_normal((n, T, 2)).astype(np.float32)
    mel = rng.standard_normal((n, T, M)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=n).astype(np.int32)
    stop = (np.arange(T)[None, :] >= (lengths[:, None] - 1)).astype(np.float32)
    return x, {"mel_target": mel, "mel_lengths": lengths, "stop_target": stop}


def keras_model(seed=3):
    import keras

    from myxtts.training.keras_model import XTTSModel

    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, 2))
    mel = keras.layers.Dense(M, name="mel")(inp)
    stop = keras.layers.Dense(1, name="stop")(inp)
    return XTTSModel(inp, {"mel_output": mel, "stop_tokens": stop})


def keras_fit(strategy, steps, epochs):
    import keras
    import tensorflow as tf

    from myxtts.training.losses import XTTSLoss

    x, y = keras_data(steps)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_B)
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        model = keras_model()
        loss_fn = XTTSLoss(
            adaptive_weight_min_warmup_steps=2,
            adaptive_weight_cooling_period=2,
            adaptive_weight_min_stable_steps=1,
            adaptive_weight_loss_high_ratio=1.001,
            adaptive_weight_loss_low_ratio=0.999,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss_fn, jit_compile=False)
    if strategy is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    hist = model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    eval_loss = model.evaluate(ds, verbose=0)
    after_eval = (
        [np.asarray(v).tolist() for v in strategy.experimental_local_results(loss_fn.step_count)]
        if strategy is not None
        else [int(loss_fn.step_count.numpy())]
    )
    if strategy is not None:
        loss_state = {
            v.name: [np.asarray(a).tolist() for a in strategy.experimental_local_results(v)]
            for v in loss_fn.state_variables
        }
    else:
        loss_state = {v.name: [v.numpy().tolist()] for v in loss_fn.state_variables}
    return dict(
        weights=[w.numpy().tolist() for w in model.weights],
        loss_state=loss_state,
        history=hist.history["loss"],
        eval_loss=float(np.ravel(eval_loss)[0]),
        step_count_after_eval=after_eval,
    )


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def mode_keras(args):
    import tensorflow as tf

    devices = configure_two_cpus()
    single = keras_fit(None, args.steps, 2)
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    dist = keras_fit(strategy, args.steps, 2)
    return dict(single=single, dist=dist, num_replicas=strategy.num_replicas_in_sync)


# ------------------------------------------------------------ multi-worker
def mode_worker(args):
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        loss_fn = make_loss(args.normalization)
    tf_config = json.loads(os.environ["TF_CONFIG"])
    rec, replicas = run_strategy(strategy, loss_fn, args.steps)
    grads = tiny_model_grads(strategy, args.normalization)
    return dict(
        task=tf_config["task"]["index"],
        num_replicas=strategy.num_replicas_in_sync,
        dist=rec,
        replica_states=replicas,
        grads=grads,
    )


def mode_single(args):
    loss_fn = make_loss(args.normalization)
    rec = run_single(loss_fn, args.steps)
    return dict(single=rec, single_state=state_dict(loss_fn))


# ------------------------------------------------------------------ resume
def mode_resume(args):
    import tensorflow as tf

    loss_fn = make_loss(args.normalization)
    if args.restore:
        ckpt = tf.train.Checkpoint(loss=loss_fn)
        path = tf.train.latest_checkpoint(args.restore)
        ckpt.restore(path).assert_existing_objects_matched()
    before = state_dict(loss_fn)
    rec = run_single(loss_fn, args.stop, start=args.start, norms=True)
    if args.save:
        tf.train.Checkpoint(loss=loss_fn).save(os.path.join(args.save, "ckpt"))
    return dict(single=rec, state=state_dict(loss_fn), restored_state=before)


# ------------------------------------------------------------- keras resume
class _Interrupt(Exception):
    pass


def mode_keras_resume(args):
    """fit for --epochs with BackupAndRestore (+ XTTSLossBackup unless
    --no-loss-backup); --interrupt-at E raises at the start of epoch E."""
    import keras
    import tensorflow as tf

    from myxtts.training.callbacks import XTTSLossBackup
    from myxtts.training.losses import XTTSLoss

    x, y = keras_data(args.steps)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_B)
    model = keras_model()
    loss_fn = XTTSLoss(
        adaptive_weight_min_warmup_steps=2,
        adaptive_weight_cooling_period=2,
        adaptive_weight_min_stable_steps=1,
        adaptive_weight_loss_high_ratio=1.001,
        adaptive_weight_loss_low_ratio=0.999,
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss_fn, jit_compile=False)
    model(x[:1])  # BackupAndRestore needs a built model

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == args.interrupt_at:
                raise _Interrupt(f"interrupted at epoch {epoch}")

    callbacks = []
    if args.backup:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup))
        if not args.no_loss_backup:
            callbacks.append(XTTSLossBackup(loss_fn, args.backup))
    callbacks.append(Stop())
    interrupted = False
    try:
        model.fit(ds, epochs=args.epochs, verbose=0, shuffle=False, callbacks=callbacks)
    except _Interrupt:
        interrupted = True
    return dict(
        interrupted=interrupted,
        weights=[w.numpy().tolist() for w in model.weights],
        state=state_dict(loss_fn),
        backup_files=sorted(os.listdir(args.backup))
        if args.backup and os.path.isdir(args.backup)
        else [],
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--normalization", default="per_sample")
    p.add_argument("--start", type=int, default=1)
    p.add_argument("--stop", type=int, default=300)
    p.add_argument("--restore", default=None)
    p.add_argument("--save", default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--interrupt-at", type=int, default=-1)
    p.add_argument("--backup", default=None)
    p.add_argument("--no-loss-backup", action="store_true")
    args = p.parse_args()
    fn = {
        "mirrored": mode_mirrored,
        "mirrored_eager": mode_mirrored_eager,
        "keras": mode_keras,
        "worker": mode_worker,
        "single": mode_single,
        "resume": mode_resume,
        "keras_resume": mode_keras_resume,
        "contrastive": mode_contrastive,
        "preset": mode_preset,
    }[args.mode]
    result = fn(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
