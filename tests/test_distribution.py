"""XTTSLoss under tf.distribute (SPEC 4.3): MirroredStrategy on 2 logical CPUs,
Keras ``fit`` under MirroredStrategy, MultiWorkerMirroredStrategy with 2
worker processes on localhost.

Logical devices must be configured before TensorFlow initialises and the
workers are separate processes, so every run happens in subprocesses
(``xtts_dist_child.py``); the test compares their JSON results.

The global batch (4 samples, different lengths, stop tokens, an extra term)
is split 2 + 2; the two halves have different mel losses (0.6x and 1.4x the
global one), replica 1's half alone holds a NaN (step 30) and a 50x spike
(step 150), so a replica that used only its own shard would have different
running statistics and a different trajectory. Required: per step, every
replica's weight equals the single-device weight exactly (same change steps),
op statistics within rtol 1e-6, and at the end every state variable
identical on all replicas / workers.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from child_env import TESTS_DIR, child_env

CHILD = os.path.join(TESTS_DIR, "xtts_dist_child.py")
STEPS = 240
STATE_RTOL = 1e-6


def _run_child(tmp_path, mode, *args, timeout=120, env=None):
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run(
        [sys.executable, CHILD, mode, str(out), *args],
        env=env or child_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{mode} child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    with open(out) as f:
        return json.load(f)


def _changes(weights, base=2.5):
    out, prev = [], base
    for i, w in enumerate(weights):
        if w != prev:
            out.append(i + 1)
        prev = w
    return out


def _check_against_single(single, dist_records, replica_index):
    ws = np.array([r["weight"] for r in single])
    wd = np.array([r["weights"][replica_index] for r in dist_records])
    changes = _changes(ws)
    assert len(changes) >= 3, f"the run must change the weight several times, got {changes}"
    assert _changes(wd) == changes
    np.testing.assert_array_equal(
        wd, ws, err_msg="weight trajectory differs from the single-device run"
    )
    s_state = np.array([r["op_state"] for r in single])
    d_state = np.array([r["op_states"][replica_index] for r in dist_records])
    np.testing.assert_array_equal(d_state[:, :3], s_state[:, :3], err_msg="op step counters")
    np.testing.assert_allclose(
        d_state, s_state, rtol=STATE_RTOL, atol=1e-12, err_msg="op running statistics"
    )
    ts = np.array([r["total"] for r in single])
    td = np.array([r["totals"][replica_index] for r in dist_records])  # replica value x replicas
    np.testing.assert_allclose(td, ts, rtol=STATE_RTOL, err_msg="returned total x num_replicas")
    return changes


def _check_final_state(single_state, replica_states, n_expected):
    for name, values in replica_states.items():
        assert len(values) == n_expected, name
        for v in values[1:]:
            assert v == values[0], f"{name} differs between replicas: {values}"
        np.testing.assert_allclose(
            np.asarray(values[0], dtype=np.float64),
            np.asarray(single_state[name], dtype=np.float64),
            rtol=STATE_RTOL,
            atol=1e-12,
            err_msg=f"{name}: distributed vs single device",
        )


def _check_grads(g):
    np.testing.assert_allclose(g["total_dist"], g["total_single"], rtol=STATE_RTOL)
    for a, b in zip(g["grads_dist"], g["grads_single"]):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6 * np.max(np.abs(b)))
    # observe_gradient_norm(list of replica gradients) records the global norm on every replica.
    np.testing.assert_allclose(g["norms_dist"], g["norm_single"], rtol=1e-5)
    hist = g["grad_history_replicas"]
    assert all(h == hist[0] for h in hist)


@pytest.mark.parametrize("normalization", ["per_sample", "global"])
def test_mirrored_strategy_matches_single_device(tmp_path, normalization):
    r = _run_child(tmp_path, "mirrored", "--steps", str(STEPS), "--normalization", normalization)
    assert r["num_replicas"] == 2
    for replica in range(2):
        changes = _check_against_single(r["single"], r["dist"], replica)
    if normalization == "per_sample":
        assert changes == [109, 169, 228]
    for rec in r["dist"]:  # identical state on both replicas after every step
        assert rec["weights"][0] == rec["weights"][1]
        assert rec["op_states"][0] == rec["op_states"][1]
        assert rec["totals"][0] == rec["totals"][1]
    _check_final_state(r["single_state"], r["replica_states"], 2)
    _check_grads(r["grads"])


def test_eager_strategy_run_matches_single_device_and_outside_scope_is_refused(tmp_path):
    """Eager MirroredStrategy.run (replicas are threads calling the loss together)
    follows the single-device trajectory; a loss built outside the scope is refused
    by name instead of counting every step once per replica."""
    r = _run_child(tmp_path, "mirrored_eager", "--steps", str(STEPS), timeout=300)
    assert r["num_replicas"] == 2
    for replica in range(2):
        _check_against_single(r["single"], r["dist"], replica)
    _check_final_state(r["single_state"], r["replica_states"], 2)
    assert "created outside the scope of the MirroredStrategy" in r["outside_error"]
    assert "strategy.scope()" in r["outside_error"]
    assert r["outside_steps"] == 0


def test_keras_fit_mirrored_matches_single_device(tmp_path):
    """Keras 3 does not divide by num_replicas (its losses do): XTTSLoss returns
    total / replicas, so fit under MirroredStrategy trains like one device."""
    r = _run_child(tmp_path, "keras", "--steps", "6")
    assert r["num_replicas"] == 2
    s, d = r["single"], r["dist"]
    np.testing.assert_allclose(d["history"], s["history"], rtol=1e-5)
    # evaluate (training=False): same global value, and no state change.
    np.testing.assert_allclose(d["eval_loss"], s["eval_loss"], rtol=1e-5)
    assert d["step_count_after_eval"] == [12, 12] and s["step_count_after_eval"] == [12]
    for a, b in zip(d["weights"], s["weights"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    single_state = {k: v[0] for k, v in s["loss_state"].items()}
    _check_final_state_tol(single_state, d["loss_state"])
    assert single_state["step_count:0"] == 12 and single_state["weight_changes:0"] >= 1


def _check_final_state_tol(single_state, replica_states):
    # Model weights differ by float rounding here, so the loss values do too.
    for name, values in replica_states.items():
        assert len(values) == 2
        assert values[1] == values[0], f"{name} differs between replicas"
        np.testing.assert_allclose(
            np.asarray(values[0], dtype=np.float64),
            np.asarray(single_state[name], dtype=np.float64),
            rtol=1e-5,
            atol=1e-7,
            err_msg=name,
        )


def test_voice_similarity_term_is_the_global_batch_term(tmp_path):
    """The contrastive speaker term's pairs span the batch: under a 2-CPU
    MirroredStrategy (every positive pair crosses the replicas) the term, the
    total and the summed gradient equal the single device's on the whole batch,
    with a NaN embedding row in one shard too; the module function gives the
    global value on every replica."""
    r = _run_child(tmp_path, "contrastive")
    assert r["num_replicas"] == 2
    for single, dist in zip(r["single"], r["dist"]):
        assert dist["terms"][0] == dist["terms"][1]
        np.testing.assert_allclose(dist["terms"][0], single["term"], rtol=1e-6)
        np.testing.assert_allclose(dist["module"], [single["module"]] * 2, rtol=1e-6)
        np.testing.assert_allclose(dist["total"], single["total"], rtol=1e-5)
        np.testing.assert_allclose(dist["grad"], single["grad"], rtol=1e-5, atol=1e-7)
    # The positive pairs exist only across the replicas: a shard-only term would
    # have none, so the term would differ.
    assert r["single"][0]["term"] != 0.0


def test_preset_target_noise_is_the_global_batch_noise(tmp_path):
    """The original's preset adds noise of 0.05 x the target std: under a
    2-CPU MirroredStrategy the std is the global batch's and each replica adds
    its own samples' rows of the global noise, so the mel term and the total
    equal the single device's (a shard-only std, or both replicas drawing the
    same rows, would not). With an empty sample in the batch, the running mel
    loss follows the term (the mean over all B) on one device as on two."""
    r = _run_child(tmp_path, "preset")
    assert r["num_replicas"] == 2
    for single, dist in zip(r["single"], r["dist"]):
        np.testing.assert_allclose(dist["mel"], [single["mel"]] * 2, rtol=1e-5)
        np.testing.assert_allclose(dist["total"], single["total"], rtol=1e-5)
        np.testing.assert_allclose(dist["running_mel"], [single["running_mel"]] * 2, rtol=1e-5)


def _free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def test_multi_worker_mirrored_strategy(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, outs, logs = [], [], []
    try:
        for i in range(2):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
            out = tmp_path / f"worker{i}.json"
            log = open(tmp_path / f"worker{i}.log", "w")
            outs.append(out)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, CHILD, "worker", str(out), "--steps", str(STEPS)],
                    env=child_env(TF_CONFIG=json.dumps(tf_config)),
                    cwd=str(tmp_path),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 150
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            text = (tmp_path / f"worker{i}.log").read_text()
            pytest.fail(f"worker {i} failed or timed out (rc={p.returncode}):\n{text[-6000:]}")
    workers = [json.load(open(o)) for o in outs]
    single = _run_child(tmp_path, "single", "--steps", str(STEPS))
    for i, w in enumerate(workers):
        assert w["task"] == i and w["num_replicas"] == 2
        _check_against_single(single["single"], w["dist"], 0)
        _check_final_state(single["single_state"], w["replica_states"], 1)
        _check_grads(w["grads"])
    assert workers[0]["replica_states"] == workers[1]["replica_states"], (
        "workers hold different state"
    )
    for a, b in zip(workers[0]["dist"], workers[1]["dist"]):
        assert a["weights"] == b["weights"] and a["op_states"] == b["op_states"]
