"""The profiler's measurement and report pieces."""

import io
import json
import math

import numpy as np
import pytest

from myxtts_ops.tools import measure, profiler, report, timing, workloads
from myxtts_ops.tools.profiler import ProfileConfig, ProfilerError
from myxtts_ops.tools.records import RECORD_FIELDS, Record


def test_floor_bytes():
    assert measure.floor_bytes("forward", 2, 3, 4, "float32") == 2 * 24 * 4
    assert measure.floor_bytes("forward_backward", 2, 3, 4, "float16") == 5 * 24 * 2
    assert measure.floor_bytes("xtts_step", 2, 3, 4, "float64") == 5 * 24 * 8
    # Only valid frames must be read; the gradient is written everywhere.
    assert measure.floor_bytes("forward", 2, 3, 4, "float32", 0.5) == 1 * 24 * 4
    assert measure.floor_bytes("forward_backward", 2, 3, 4, "float32", 0.5) == 3 * 24 * 4
    assert measure.floor_bytes("forward", 1, 1, 1, "bfloat16") == 4
    # The raw kernels write both gradients.
    assert measure.floor_bytes("backward", 2, 3, 4, "float32", 0.5, gradients=2) == 3 * 24 * 4
    with pytest.raises(ValueError, match="backwards"):
        measure.floor_bytes("backwards", 2, 3, 4, "float32")


def test_percentiles():
    med, p20, p80 = measure.percentiles_ms([0.001 * i for i in range(1, 102)])
    assert med == pytest.approx(51.0)
    assert p20 == pytest.approx(21.0)
    assert p80 == pytest.approx(81.0)
    assert measure.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


def test_record_fields_are_the_spec_fields_in_order():
    assert RECORD_FIELDS == (
        "impl",
        "mode",
        "batch",
        "frames",
        "mels",
        "dtype",
        "device",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "gbps",
    )
    rec = Record("fused", "forward", 1, 2, 3, "float32", "cpu", 1.0, 0.5, 2.0, 9.0, ops_per_step=4)
    assert list(rec.to_dict())[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert Record.from_dict(rec.to_dict()) == rec


def test_hlo_stats_counts_work_and_custom_calls():
    hlo = """HloModule m
%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(f32[] %x, f32[] %y)
}
ENTRY %main (a: f32[4]) -> (f32[], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %c = f32[] constant(0)
  %r = f32[] reduce(f32[4]{0} %a, f32[] %c), dimensions={0}, to_apply=%add
  %k = f32[4]{0} custom-call(f32[4]{0} %a), custom_call_target="myxtts_mel_loss"
  ROOT %t = (f32[], f32[4]{0}) tuple(f32[] %r, f32[4]{0} %k)
}
"""
    assert measure.hlo_stats(hlo) == (3, 1)  # add, reduce, custom-call


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch=0),
        dict(repeats=0),
        dict(warmup=-1),
        dict(dtype="int8"),
        dict(device="tpu"),
        dict(impls=("nope",)),
        dict(modes=("nope",)),
        dict(impls=()),
    ],
)
def test_config_validation(kw):
    with pytest.raises(ProfilerError):
        ProfileConfig(**kw).validate()


def test_count_ops_excludes_bookkeeping():
    import tensorflow as tf

    @tf.function
    def f(x):
        return tf.identity(tf.reduce_sum(tf.abs(x) * 2.0))

    concrete = f.get_concrete_function(tf.TensorSpec([4], tf.float32))
    assert measure.count_ops(concrete) == 3  # Abs, Mul, Sum


def test_progress_bar_off_a_tty():
    buf = io.StringIO()
    bar = profiler.Progress(3, label="sweep ", stream=buf)
    for _ in range(3):
        bar.update(1, note="x")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("sweep [" + "#" * 30 + "] 3/3")


def test_bandwidth_positive():
    bw = timing.measure_bandwidth("cpu", "/CPU:0", 8 << 20, repeats=2)
    assert bw["best"] > 0 and math.isfinite(bw["best"])
    assert bw["best"] == max(v for k, v in bw.items() if k != "best")


def test_sweep_has_a_floor_record_for_every_shape_and_mode(tmp_path):
    config = ProfileConfig(
        mels=8,
        repeats=2,
        warmup=0,
        impls=("reference", "xla"),
        modes=("forward", "forward_backward"),
        shapes=[(2, 16), (4, 32)],
        bandwidth_mib=8,
    )
    result = profiler.run_profile(config, progress=True, log=lambda m: None)
    assert not result.failures
    recs = result.records
    for b, t in config.shapes:
        for mode in config.modes:
            sel = [r for r in recs if (r.batch, r.frames, r.mode) == (b, t, mode)]
            assert {r.impl for r in sel} == {"reference", "xla", "floor"}
            floor = next(r for r in sel if r.impl == "floor")
            assert floor.gbps == pytest.approx(result.bandwidth["best"])
            nbytes = measure.floor_bytes(mode, b, t, 8, "float32", floor.valid_fraction)
            assert floor.median_ms == pytest.approx(nbytes / (floor.gbps * 1e9) * 1e3)
            for r in sel:
                if r.impl != "floor":
                    assert r.gbps == pytest.approx(nbytes / (r.median_ms * 1e-3) / 1e9)
                    assert r.floor_fraction == pytest.approx(floor.median_ms / r.median_ms)
                # Measured from the HLO of the compiled step, not written in.
                if r.impl == "xla":
                    assert r.xla_hlo_ops > 10 and r.xla_custom_calls == 0
                else:
                    assert r.xla_hlo_ops is None
    # report: JSON, table, sweep plot
    path = tmp_path / "sweep.json"
    report.write_json(recs, str(path))
    data = json.loads(path.read_text())
    assert len(data) == len(recs)
    assert all(list(r)[: len(RECORD_FIELDS)] == list(RECORD_FIELDS) for r in data)
    table = report.format_table(recs)
    assert table.count("shape [") == 2
    md = report.format_table(recs, markdown=True)
    assert "| mode | impl |" in md
    png = tmp_path / "sweep.png"
    report.plot(recs, str(png))
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_dtypes(dtype):
    config = ProfileConfig(
        batch=2,
        frames=8,
        mels=4,
        dtype=dtype,
        repeats=1,
        warmup=0,
        impls=("reference",),
        modes=("forward", "forward_backward"),
        bandwidth_mib=8,
    )
    result = profiler.run_profile(config, progress=False, log=lambda m: None)
    assert not result.failures
    assert {r.dtype for r in result.records} == {dtype}
    assert len(result.records) == 4


def test_make_batch_lengths_in_range():
    yt, yp, ln = workloads.make_batch(64, 100, 4, "float32", seed=1)
    ln = ln.numpy()
    assert yt.shape == yp.shape == (64, 100, 4)
    assert ln.min() >= 50 and ln.max() <= 100
    assert not np.array_equal(yt.numpy(), yp.numpy())


def test_input_rotation_covers_the_cache():
    # [32, 1000, 80] float32: 20.48 MB per (y_true, y_pred) pair.
    assert workloads.input_sets_for(32, 1000, 80, "float32", 96 << 20) == 5
    assert workloads.input_sets_for(64, 2000, 80, "float64", 96 << 20) == 1
    assert workloads.input_sets_for(1, 1, 1, "float16", 1 << 30) == 16  # capped


def test_records_come_from_their_own_timings_and_rounds_rotate(monkeypatch):
    """Each record's median, p20, p80 and 'vs reference' are those of its own
    step's timings (distinct synthetic ones per step, so a record given another
    step's timings or an inverted ratio fails), and round r runs every step on
    input copy r (mod the copies)."""
    seen, synthetic = {}, {}

    def recorded_run(steps, arg_sets, repeats, warmup, device_kind):
        for step in steps:
            key = (step.impl, step.mode)

            def recording(*args, fn=step.fn, key=key):
                seen.setdefault(key, []).append(id(args[0]))
                return fn(*args)

            step.fn = recording
        timing.run_interleaved(steps, arg_sets, repeats, warmup, device_kind)
        for k, step in enumerate(steps):
            synthetic[(step.impl, step.mode)] = [
                (k + 1) * 1e-3 * (1 + 0.25 * i) for i in range(repeats)
            ]
            step.times = list(synthetic[(step.impl, step.mode)])
        seen["copies"] = [id(a[0]) for a in arg_sets]

    monkeypatch.setattr(profiler, "run_interleaved", recorded_run)
    repeats = 5
    config = ProfileConfig(
        batch=2,
        frames=8,
        mels=4,
        repeats=repeats,
        warmup=0,
        impls=("reference", "xla"),
        modes=("forward", "forward_backward"),
        bandwidth_mib=8,
        rotate_mib=1,
    )
    result = profiler.run_profile(config, progress=False, log=lambda m: None)
    assert not result.failures
    copies = seen.pop("copies")
    assert {r.input_sets for r in result.records} == {len(copies)} == {16}
    assert set(seen) == set(synthetic) and len(seen) == 4
    for calls in seen.values():
        assert calls == copies[:repeats]  # round r: copy r, for every step
    for r in (r for r in result.records if r.impl != "floor"):
        times_ms = np.asarray(synthetic[(r.impl, r.mode)]) * 1e3
        p20, p50, p80 = np.percentile(times_ms, [20, 50, 80])
        assert (r.median_ms, r.p20_ms, r.p80_ms) == pytest.approx((p50, p20, p80), rel=1e-12)
        assert r.repeats == repeats
        ref_ms = np.median(np.asarray(synthetic[("reference", r.mode)]) * 1e3)
        assert r.speedup_vs_reference == pytest.approx(ref_ms / p50, rel=1e-12)
    assert all(r.speedup_vs_reference == 1.0 for r in result.records if r.impl == "reference")


def test_term_shares_subtract_the_baseline_once_per_set(monkeypatch):
    """measure_term_shares' arithmetic on fixed timings: each graph's time
    minus the baseline's in the same round, divided by the input sets, in ms;
    each share against the whole loss's median."""
    from myxtts_ops.tools import term_shares

    sets = 4
    times = {
        "base": [0.010, 0.012, 0.011],
        "xtts": [0.050, 0.060, 0.047],
        "mel_loss": [0.018, 0.020, 0.016],
        "stop_loss": [0.0105, 0.0125, 0.0115],
    }
    monkeypatch.setattr(
        term_shares, "_time_terms", lambda *a, **k: {n: list(v) for n, v in times.items()}
    )
    whole, shares = term_shares.measure_term_shares(2, 8, 4, repeats=3, sets=sets)
    base = np.asarray(times["base"])

    def per_step_ms(name):
        return (np.asarray(times[name]) - base) / sets * 1e3

    assert whole == pytest.approx(np.median(per_step_ms("xtts")), rel=1e-12)
    assert whole == pytest.approx(10.0)  # (0.050 - 0.010) / 4 s
    assert [s.term for s in shares] == ["mel_loss", "stop_loss"]
    for s in shares:
        p20, p50, p80 = np.percentile(per_step_ms(s.term), [20, 50, 80])
        assert (s.median_ms, s.p20_ms, s.p80_ms) == pytest.approx((p50, p20, p80), rel=1e-12)
        assert s.share == pytest.approx(p50 / whole, rel=1e-12)
    assert shares[0].median_ms == pytest.approx(2.0) and shares[0].share == pytest.approx(0.2)
