"""Thread safety, SavedModel round trips and CUDA-built libraries on CPU.

(a) The op (eager, a shared tf.function, and ``myxtts_ops.kernels``) called
    from 8 Python threads at once on different inputs gives every caller its
    own result (checked against the float64 oracle), and the lazy library
    load is safe when the first calls race.
(b) A tf.Module whose tf.function calls the op, saved with
    ``tf.saved_model.save``, loads in a fresh process after
    ``myxtts_ops.load_ops()`` (and through ``myxtts_ops.saved_model.load``)
    and gives the same numbers; without load_ops TensorFlow's error names the
    op, and ``myxtts_ops.saved_model`` turns it into guidance.
(c) A library built with CUDA loads into a CPU-only TensorFlow (or a process
    that hides the GPUs) and runs its CPU kernels.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf

import myxtts_ops
import oracle
from child_env import child_env
from conftest import TOLERANCES, make_inputs

N_THREADS = 8
_TESTS = os.path.dirname(os.path.abspath(__file__))


def run_child(code, tmp_path, env=None, timeout=240):
    script = tmp_path / f"child_{abs(hash(code)) % 10**8}.py"
    script.write_text(textwrap.dedent(code))
    full_env = child_env(**(env or {}))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=str(tmp_path),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def _expect(case):
    y_true, y_pred, lengths, dtype, loss_type, norm = case
    return oracle.forward(y_true, y_pred, lengths, None, loss_type, 0.7, norm)


def _assert_matches(got, want, dtype, what):
    t = TOLERANCES[dtype]
    np.testing.assert_allclose(
        np.float64(got[0]), want["loss"], rtol=t["rtol"], atol=t["atol"], err_msg=f"{what}: loss"
    )
    np.testing.assert_allclose(
        np.asarray(got[1], np.float64),
        want["per_sample"],
        rtol=t["rtol"],
        atol=t["atol"],
        err_msg=f"{what}: per_sample",
    )
    assert int(got[2]) == want["nonfinite_count"], f"{what}: nonfinite_count"
    np.testing.assert_allclose(
        np.asarray(got[3]), want["state"], rtol=t["rtol"], atol=t["atol"], err_msg=f"{what}: state"
    )


def _thread_cases(rng):
    dtypes = ("float16", "bfloat16", "float32", "float64")
    cases = []
    for i in range(N_THREADS):
        dtype = dtypes[i % 4]
        shape = (1 + i % 3, 37 + 23 * i, 80 + (i % 2))  # all different
        y_true, y_pred, lengths = make_inputs(
            rng,
            shape,
            dtype,
            nonfinite_valid=i % 3,
            nonfinite_padding=2,
            lengths_dtype=np.int64 if i % 2 else np.int32,
        )
        cases.append(
            (
                y_true,
                y_pred,
                lengths,
                dtype,
                ("l1", "huber")[i % 2],
                ("per_sample", "global")[(i // 2) % 2],
            )
        )
    return cases


def _run_threads(fn, n_calls):
    barrier = threading.Barrier(N_THREADS)
    errors = []
    results = [[] for _ in range(N_THREADS)]

    def worker(i):
        try:
            barrier.wait()
            for _ in range(n_calls):
                results[i].append(fn(i))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append((i, err))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    return results


# ---------------------------------------------------------------------------
# (a) threads


def test_eager_op_from_8_threads(rng):
    cases = _thread_cases(rng)
    want = [_expect(c) for c in cases]

    def call(i):
        y_true, y_pred, lengths, _, loss_type, norm = cases[i]
        out = myxtts_ops.masked_mel_loss(
            y_true, y_pred, lengths, None, loss_type=loss_type, huber_delta=0.7, normalization=norm
        )
        return (
            out.loss.numpy(),
            out.per_sample.numpy(),
            out.nonfinite_count.numpy(),
            out.state.numpy(),
        )

    for i, per_thread in enumerate(_run_threads(call, 10)):
        for got in per_thread:
            _assert_matches(got, want[i], cases[i][3], f"thread {i}")
        # Deterministic: every call of one thread is bitwise the same.
        for got in per_thread[1:]:
            assert np.array_equal(got[1], per_thread[0][1])


def test_shared_tf_function_from_8_threads(rng):
    """One traced function (one graph per input signature) used concurrently."""
    cases = [c for c in _thread_cases(rng)]
    # Same dtype/loss settings for all: one concrete function shared by all threads.
    cases = [
        (
            c[0].astype(np.float32),
            c[1].astype(np.float32),
            None if c[2] is None else c[2].astype(np.int32),
            "float32",
            "huber",
            "global",
        )
        for c in cases
    ]
    want = [_expect(c) for c in cases]

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None], tf.float32)] * 2
        + [tf.TensorSpec([None], tf.int32)]
    )
    def fn(y_true, y_pred, lengths):
        out = myxtts_ops.masked_mel_loss(
            y_true, y_pred, lengths, loss_type="huber", huber_delta=0.7, normalization="global"
        )
        grad = tf.gradients(out.loss, y_pred)[0]
        return out.loss, out.per_sample, out.nonfinite_count, out.state, grad

    def call(i):
        y_true, y_pred, lengths = cases[i][:3]
        if lengths is None:
            lengths = np.full([y_true.shape[0]], y_true.shape[1], np.int32)
        return [t.numpy() for t in fn(y_true, y_pred, lengths)]

    call(0)  # trace once before the race
    for i, per_thread in enumerate(_run_threads(call, 8)):
        y_true, y_pred, lengths = cases[i][:3]
        _, want_grad = oracle.backward(y_true, y_pred, lengths, "huber", 0.7, "global")
        for got in per_thread:
            _assert_matches(got, want[i], "float32", f"thread {i}")
            np.testing.assert_allclose(got[4], want_grad, rtol=1e-5, atol=1e-9)
    assert fn.experimental_get_tracing_count() == 1


def test_kernels_module_from_8_threads(rng):
    from myxtts_ops import kernels

    cases = _thread_cases(rng)
    want = [_expect(c) for c in cases]

    def call(i):
        y_true, y_pred, lengths, _, loss_type, norm = cases[i]
        out = kernels.forward(
            y_true,
            y_pred,
            lengths,
            None,
            loss_type=loss_type,
            huber_delta=0.7,
            normalization=norm,
            num_threads=1 + i % 3,
        )
        return out["loss"], out["per_sample"], out["nonfinite_count"], out["state"]

    for i, per_thread in enumerate(_run_threads(call, 10)):
        for got in per_thread:
            _assert_matches(got, want[i], cases[i][3], f"thread {i}")


def test_first_calls_race_in_fresh_process(tmp_path):
    """load_ops() is lazy: 8 threads making the first call at once all succeed."""
    proc = run_child(
        """
        import threading, numpy as np
        import myxtts_ops
        from myxtts_ops import _loader
        assert _loader._library is None
        barrier = threading.Barrier(8)
        out, errors = {}, []
        def work(i):
            try:
                y = np.full((2, 5, 3), float(i), np.float32)
                barrier.wait()
                r = myxtts_ops.masked_mel_loss(y, y + 1.0, [5, i % 6])
                out[i] = (float(r.loss), int(r.nonfinite_count))
            except BaseException as e:
                errors.append(repr(e))
        ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert not errors, errors
        assert all(v == (1.0, 0) for v in out.values()) and len(out) == 8, out
        print("RACE-OK")
        """,
        tmp_path,
    )
    assert proc.returncode == 0 and "RACE-OK" in proc.stdout, proc.stderr[-4000:]


# ---------------------------------------------------------------------------
# (b) SavedModel


class _LossModule(tf.Module):
    def __init__(self):
        super().__init__()
        self.state = tf.Variable(tf.zeros([myxtts_ops.STATE_SIZE], tf.float64), trainable=False)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def __call__(self, y_true, y_pred, lengths):
        out = myxtts_ops.masked_mel_loss(
            y_true,
            y_pred,
            lengths,
            self.state,
            loss_type="huber",
            huber_delta=0.37,
            normalization="per_sample",
        )
        self.state.assign(out.state)
        grad = tf.gradients(out.loss, y_pred)[0]
        return {
            "loss": out.loss,
            "per_sample": out.per_sample,
            "nonfinite_count": out.nonfinite_count,
            "state": out.state,
            "grad": grad,
        }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A SavedModel with the op, plus its inputs and the expected outputs as .npy."""
    root = tmp_path_factory.mktemp("savedmodel")
    rng = np.random.default_rng(20240611)
    y_true, y_pred, lengths = make_inputs(rng, (3, 41, 80), "float32", nonfinite_padding=3)
    module = _LossModule()
    tf.saved_model.save(module, str(root / "model"))  # saved with a fresh state
    first = module(y_true, y_pred, lengths)
    second = module(y_true, y_pred * 0.5, lengths)  # the state carries over
    assert second["state"].numpy()[0] == 2.0
    np.save(root / "y_true.npy", y_true)
    np.save(root / "y_pred.npy", y_pred)
    np.save(root / "lengths.npy", lengths)
    for name in first:
        np.save(root / f"want_{name}.npy", second[name].numpy())
    # The numbers themselves are right (so "same numbers" below means right numbers).
    want1 = oracle.forward(y_true, y_pred, lengths, None, "huber", 0.37, "per_sample")
    np.testing.assert_allclose(first["loss"].numpy(), want1["loss"], rtol=1e-5)
    return root


_LOAD_AND_COMPARE = """
import sys, numpy as np, tensorflow as tf
import myxtts_ops
{prelude}
m = {loader}("model")
a = np.load("y_true.npy"); b = np.load("y_pred.npy"); l = np.load("lengths.npy")
m(a, b, l)
got = m(a, b * 0.5, l)
for name in ("loss", "per_sample", "nonfinite_count", "state", "grad"):
    want = np.load(f"want_{{name}}.npy")
    have = got[name].numpy()
    assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
    assert np.array_equal(have, want), (name, have, want)
print("SAME-NUMBERS")
"""


def test_savedmodel_loads_in_fresh_process_after_load_ops(saved):
    code = _LOAD_AND_COMPARE.format(prelude="myxtts_ops.load_ops()", loader="tf.saved_model.load")
    proc = run_child(code, saved)
    assert proc.returncode == 0 and "SAME-NUMBERS" in proc.stdout, proc.stderr[-4000:]


def test_savedmodel_loads_with_helper(saved):
    code = _LOAD_AND_COMPARE.format(
        prelude="import myxtts_ops.saved_model", loader="myxtts_ops.saved_model.load"
    )
    proc = run_child(code, saved)
    assert proc.returncode == 0 and "SAME-NUMBERS" in proc.stdout, proc.stderr[-4000:]


def test_savedmodel_without_load_ops_fails_naming_the_op(saved):
    proc = run_child(
        """
        import json, tensorflow as tf
        import myxtts_ops.saved_model as sm
        try:
            tf.saved_model.load("model")
        except Exception as err:
            better = sm.explain(err)
            print(json.dumps({"type": type(err).__name__, "message": str(err),
                              "explained": None if better is None else str(better),
                              "explained_type": type(better).__name__}))
        else:
            print(json.dumps({"type": None}))
        """,
        saved,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] is not None, "loading without load_ops() unexpectedly worked"
    assert "MyxttsOps>MaskedMelLoss" in result["message"], result
    # TensorFlow's own text gives no hint about load_ops(): myxtts_ops.saved_model does.
    assert result["explained"] is not None, result
    assert result["explained_type"] == "MissingOpError"
    assert "myxtts_ops.load_ops()" in result["explained"]
    assert "myxtts_ops.saved_model.load" in result["explained"]
    assert "MyxttsOps>MaskedMelLoss" in result["explained"]


def test_helper_explains_an_op_this_build_does_not_have(saved, tmp_path):
    """A graph with a MyxttsOps> op unknown to this build (another version)."""
    import shutil

    from myxtts_ops import saved_model

    model = tmp_path / "model"
    shutil.copytree(saved / "model", model)
    pb = model / "saved_model.pb"
    data = pb.read_bytes()
    assert b"MyxttsOps>MaskedMelLoss" in data
    # Same length, so the protobuf stays well formed.
    pb.write_bytes(data.replace(b"MyxttsOps>MaskedMelLoss", b"MyxttsOps>MaskedMelLosZ"))
    with pytest.raises(saved_model.MissingOpError, match="MyxttsOps>MaskedMelLosZ") as info:
        saved_model.load(str(model))
    assert "different version of myxtts-ops" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_explain_a_node_with_another_versions_inputs():
    """A graph written when an op had other inputs (CheckLengths before its
    bounds input) fails to import with TF's NodeDef message; explain() says
    which op and what to do."""
    from myxtts_ops import load_ops, saved_model

    load_ops()
    graph = tf.compat.v1.GraphDef()
    lengths = graph.node.add(name="L", op="Placeholder")
    lengths.attr["dtype"].type = tf.int32.as_datatype_enum
    node = graph.node.add(name="check", op="MyxttsOps>CheckLengths", input=["L"])
    node.attr["T"].type = tf.int32.as_datatype_enum
    node.attr["input_name"].s = b"lengths"
    node.attr["limit"].i = 10
    with pytest.raises(ValueError) as info, tf.Graph().as_default():
        tf.graph_util.import_graph_def(graph, name="")
    better = saved_model.explain(info.value)
    assert isinstance(better, saved_model.MissingOpError)
    assert "'MyxttsOps>CheckLengths' with other inputs" in str(better)
    assert "different version" in str(better)


def test_explain_ignores_other_errors():
    from myxtts_ops import saved_model

    assert saved_model.explain(ValueError("something else")) is None
    assert saved_model.explain(RuntimeError("Op type not registered 'Foo'")) is None
    err = tf.errors.NotFoundError(None, None, "Op type not registered 'MyxttsOps>X' in binary")
    assert isinstance(saved_model.explain(err), saved_model.MissingOpError)


def test_helper_passes_other_load_errors_through(tmp_path):
    from myxtts_ops import saved_model

    with pytest.raises(OSError):
        saved_model.load(str(tmp_path / "does-not-exist"))


# ---------------------------------------------------------------------------
# (c) CUDA-built library on CPU


def test_build_info_reports_cuda():
    from myxtts_ops import _loader

    info = _loader.build_info()
    assert info is not None, "myxtts_ops/_lib/_build_info.py is missing"
    assert isinstance(info.CUDA_ENABLED, bool)
    assert info.TF_VERSION and isinstance(info.TF_VERSION, str)
    if info.CUDA_ENABLED:
        assert getattr(info, "CUDA_ARCHITECTURES", ""), "CUDA build without architectures"
    from myxtts_ops import kernels

    assert kernels.built_with_cuda() == info.CUDA_ENABLED


def test_runs_on_cpu_whatever_the_build(rng):
    """The op placed on the CPU (the only device under tensorflow-cpu) computes
    the right numbers, also when the library was built with CUDA."""
    y_true, y_pred, lengths = make_inputs(rng, (4, 50, 80), "float32", nonfinite_valid=2)
    with tf.device("/CPU:0"):
        out = myxtts_ops.masked_mel_loss(y_true, y_pred, lengths)
    assert "CPU" in out.loss.device
    want = oracle.forward(y_true, y_pred, lengths)
    t = TOLERANCES["float32"]
    np.testing.assert_allclose(out.loss.numpy(), want["loss"], rtol=t["rtol"], atol=t["atol"])
    assert int(out.nonfinite_count) == want["nonfinite_count"]


def test_cuda_build_runs_cpu_kernels_with_gpus_hidden(tmp_path):
    """In a fresh process that sees no GPU (as under tensorflow-cpu), the library
    loads and the op and its gradient run on the CPU."""
    proc = run_child(
        """
        import json, sys, numpy as np, tensorflow as tf
        sys.path.insert(0, %r)
        import myxtts_ops, oracle
        from myxtts_ops import _loader
        info = _loader.build_info()
        assert not tf.config.list_physical_devices("GPU")
        rng = np.random.default_rng(5)
        for dtype in ("float16", "float32", "float64"):
            a = rng.standard_normal((2, 17, 80)).astype(dtype)
            b = rng.standard_normal((2, 17, 80)).astype(dtype)
            l = np.array([17, 9], np.int32)
            bt = tf.constant(b)
            with tf.GradientTape() as tape:
                tape.watch(bt)
                out = myxtts_ops.masked_mel_loss(a, bt, l)
            g = tape.gradient(out.loss, bt)
            assert "CPU" in out.loss.device and "CPU" in g.device
            want = oracle.forward(a, b, l)
            np.testing.assert_allclose(float(out.loss), want["loss"], rtol=1e-5)
            _, wg = oracle.backward(a, b, l)
            # float16 gradients are rounded to float16; the others to float32 or better.
            rtol = 1e-2 if dtype == "float16" else 1e-6
            np.testing.assert_allclose(g.numpy().astype(np.float64), wg, rtol=rtol, atol=1e-9)
        print(json.dumps({"cuda_enabled": info.CUDA_ENABLED,
                          "tf_built_with_cuda": tf.test.is_built_with_cuda()}))
        """
        % _TESTS,
        tmp_path,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result["cuda_enabled"], bool)
