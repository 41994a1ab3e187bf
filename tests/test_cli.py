"""`myxtts-ops` command line: argument handling, `profile --quick`, `demo`."""

import json
import os
import subprocess
import sys

import pytest

import myxtts_ops
from child_env import TESTS_DIR, child_env
from myxtts_ops.tools import cli
from myxtts_ops.tools.records import RECORD_FIELDS
from myxtts_ops.tools.workloads import MODES


def _fused_available():
    from myxtts_ops.tools.profiler import ProfilerError, check_fused_available

    try:
        check_fused_available()
        return True
    except ProfilerError:
        return False


def _impls():
    # The fused op is measured whenever its library loads (always in CI, where
    # it is built first); otherwise the rest of the CLI is still tested.
    return "fused,reference,xla,fused_xla" if _fused_available() else "reference,xla"


BAD_ARGS = [
    [],
    ["frobnicate"],
    ["profile", "--batch", "0"],
    ["profile", "--batch", "x"],
    ["profile", "--frames", "-5"],
    ["profile", "--dtype", "int8"],
    ["profile", "--device", "tpu"],
    ["profile", "--repeats", "0"],
    ["profile", "--warmup", "-1"],
    ["profile", "--impls", "fused,bogus"],
    ["profile", "--impls", ""],
    ["profile", "--modes", "backward"],
    ["profile", "--sweep-batches", "8,zero"],
    ["profile", "--quick", "--sweep"],
    ["profile", "--quick", "--batch", "8"],
    ["profile", "--sweep", "--frames", "100"],
    ["profile", "--no-such-flag"],
    ["profile", "--terms", "--tokens", "0"],
    ["demo", "--steps", "0"],
    ["demo", "--implementation", "numpy"],
    ["profile", "--seed", "-1"],
    ["profile", "--seed", str(2**32)],
    ["demo", "--seed", "-3"],
    # Options that would do nothing without their mode are refused, not ignored.
    ["profile", "--sweep-batches", "8,16"],
    ["profile", "--sweep-frames", "100"],
    ["profile", "--tokens", "10"],
    ["profile", "--heads", "2"],
    ["profile", "--terms", "--sweep"],
]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["profile", "--plot", "{tmp}/chart.xyz"],
            "--plot {tmp}/chart.xyz: matplotlib cannot write .xyz",
        ),
        (
            ["demo", "--plot", "{tmp}/demo.doc"],
            "--plot {tmp}/demo.doc: matplotlib cannot write .doc",
        ),
        (["profile", "--json", "{tmp}"], "--json {tmp}: is a directory"),
        (["profile", "--trace", "{tmp}/file"], "--trace {tmp}/file: exists and is not a directory"),
        (
            ["profile", "--json", "{tmp}/file/r.json"],
            "--json {tmp}/file/r.json: {tmp}/file is not a directory",
        ),
    ],
)
def test_unwritable_outputs_refused_before_measuring(argv, expected, tmp_path, capsys):
    """An output path that cannot be written is a usage error naming the option and
    the value, before anything is measured or trained."""
    (tmp_path / "file").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", BAD_ARGS, ids=lambda a: " ".join(a) or "<none>")
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert "error:" in err
    assert "Traceback" not in err


def test_bad_arguments_in_a_subprocess_exit_2_without_traceback():
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "myxtts_ops", "profile", "--batch", "-3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=TESTS_DIR,
    )
    assert proc.returncode == 2, proc.stderr
    assert "usage: myxtts-ops profile" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_tensorflow_is_explained(tmp_path):
    """Without TensorFlow the CLI says what to install (exit 1, no traceback), the
    op API raises OpLibraryError with the same advice, and the TF-free parts work."""
    (tmp_path / "tensorflow.py").write_text("raise ImportError('blocked for this test')\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])

    def run(*args):
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=tmp_path,
        )

    advice = "myxtts-ops needs TensorFlow"
    proc = run("-m", "myxtts_ops", "profile", "--quick", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert advice in proc.stderr and "pip install" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("-c", "import myxtts_ops; myxtts_ops.masked_mel_loss")
    assert "OpLibraryError: " + advice in proc.stderr, proc.stderr
    code = "import myxtts_ops as m; print(m.kernels.STATE_SIZE, m.MaskedMelLossOutput.__name__)"
    proc = run("-c", code)
    expected = f"{myxtts_ops.STATE_SIZE} MaskedMelLossOutput"
    assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr


def test_unbuilt_checkout_helps_and_says_what_to_build(tmp_path):
    """An unbuilt source tree first on sys.path: --help works, and a command says
    in one paragraph what to build (exit 1, no traceback)."""
    import shutil

    source = os.path.dirname(myxtts_ops.__file__)
    shutil.copytree(
        source,
        tmp_path / "myxtts_ops",
        ignore=lambda d, names: [
            n for n in names if n.endswith((".so", "_state_layout.py", "_build_info.py"))
        ],
    )
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "myxtts_ops", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=tmp_path,
        )

    proc = run("--help")
    assert proc.returncode == 0 and "profile" in proc.stdout, proc.stderr
    proc = run("profile", "--quick", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "state layout (generated by the build) is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_profile_refuses_a_library_without_cuda(monkeypatch, capsys):
    """A GPU with a CPU-only build: TF would place the op on the CPU under a table
    labelled GPU, so the profile stops with what to do instead."""
    import types

    from myxtts_ops import _loader
    from myxtts_ops.tools import profiler

    monkeypatch.setattr(profiler, "resolve_device", lambda device: ("gpu", "/GPU:0"))
    monkeypatch.setattr(profiler, "check_fused_available", lambda: None)
    monkeypatch.setattr(_loader, "build_info", lambda: types.SimpleNamespace(CUDA_ENABLED=False))
    rc = cli.main(["profile", "--quick", "--impls", "fused,reference", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "built without CUDA kernels" in err and "--device cpu" in err


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["profile", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--batch",
        "--frames",
        "--mels",
        "--dtype",
        "--device",
        "--repeats",
        "--warmup",
        "--sweep",
        "--modes",
        "--impls",
        "--json",
        "--plot",
        "--trace",
        "--quick",
    ):
        assert flag in out


def test_op_library_failure_is_a_message_not_a_traceback(monkeypatch, capsys):
    import myxtts_ops

    def broken_loader():
        raise ImportError(
            "libmyxtts_ops.so: undefined symbol: _ZN10tensorflow8OpKernelD2Ev "
            "(built against a different TensorFlow)"
        )

    monkeypatch.setattr(myxtts_ops, "load_ops", broken_loader, raising=False)
    rc = cli.main(["profile", "--quick", "--impls", "fused,reference"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "undefined symbol" in err
    assert "built against a different TensorFlow" in err
    assert "Traceback" not in err


def test_profile_quick_writes_json_plot_and_trace(tmp_path, capsys):
    json_path = tmp_path / "out" / "quick.json"
    png_path = tmp_path / "quick.png"
    trace_dir = tmp_path / "trace"
    rc = cli.main(
        [
            "profile",
            "--quick",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--bandwidth-mib",
            "32",
            "--impls",
            _impls(),
            "--json",
            str(json_path),
            "--plot",
            str(png_path),
            "--trace",
            str(trace_dir),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    records = json.loads(json_path.read_text())
    assert isinstance(records, list) and records
    impls = _impls().split(",")
    for rec in records:
        for field in RECORD_FIELDS:
            assert field in rec, (field, rec)
        assert (rec["batch"], rec["frames"], rec["mels"], rec["dtype"]) == (32, 1000, 80, "float32")
        assert rec["device"] in ("cpu", "gpu")
        assert rec["median_ms"] > 0 and rec["gbps"] > 0
        assert rec["p20_ms"] <= rec["median_ms"] <= rec["p80_ms"]
    got = {(r["impl"], r["mode"]) for r in records}
    want = {(i, m) for i in impls + ["floor"] for m in MODES}
    assert got == want
    for rec in records:
        if rec["impl"] != "floor":
            assert rec["ops_per_step"] > 0
            assert rec["repeats"] == 3
        # XLA rows carry the measured size of their HLO module.
        assert (rec["xla_hlo_ops"] is not None) == (rec["impl"] in ("xla", "fused_xla"))
    # Table: every impl and mode, and the ops column.
    for word in impls + ["floor"] + list(MODES) + ["ops/step", " HLO, "]:
        assert word in out
    assert png_path.stat().st_size > 1000
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(trace_dir.rglob("*.xplane.pb")), "no profiler trace written"


def test_profile_terms_breakdown(capsys):
    """--terms: every term of the default MyXTTS model timed alone, with its share."""
    rc = cli.main(
        [
            "profile",
            "--batch",
            "2",
            "--frames",
            "24",
            "--mels",
            "8",
            "--tokens",
            "6",
            "--heads",
            "2",
            "--repeats",
            "3",
            "--warmup",
            "0",
            "--bandwidth-mib",
            "8",
            "--rotate-mib",
            "1",
            "--impls",
            "reference",
            "--modes",
            "forward",
            "--terms",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    table = out[out.index("XTTSLoss terms") : out.index("profile took")].strip()
    assert "attention [2, 2, 24, 6]" in table
    terms = {line.split()[0] for line in table.splitlines()[2:] if line.strip()}
    assert {
        "mel_loss",
        "stop_loss",
        "attention_loss",
        "duration_loss",
        "pitch_loss",
        "energy_loss",
    } <= terms
    for line in table.splitlines()[2:]:
        if "< noise" in line:  # below the baseline: no median or share printed
            continue
        median, p20, p80 = (float(x) for x in line.split()[1:4])
        assert p20 <= median <= p80


def test_terms_below_the_baseline_are_not_printed_as_times():
    """A term that costs less than the baseline graph (a negative difference)
    is shown as below the noise, with no share, never as a negative time."""
    from myxtts_ops.tools.term_shares import TermShare, format_term_table

    shares = [
        TermShare("mel_loss", 1.5, 1.4, 1.6, 0.5),
        TermShare("tiny", -0.02, -0.07, 0.01, -0.01),
    ]
    table = format_term_table(3.0, shares, 2, 10, 4, 3, 1)
    mel, tiny = table.splitlines()[2:]
    assert mel.split()[1] == "1.500" and mel.endswith("50.0%")
    assert "< noise" in tiny and tiny.rstrip().endswith("-") and "-0.020" not in tiny


def test_terms_without_the_op_library_use_the_reference(monkeypatch, capsys):
    """--terms follows --impls: with the op library unavailable, the
    reference-only profile the error message suggests also times the terms
    (with the reference implementation) instead of failing in a traceback."""
    from myxtts_ops import _loader

    def missing():
        raise _loader.OpLibraryError("the myxtts-ops op library is missing (test)")

    monkeypatch.setattr(_loader, "load_ops", missing)
    monkeypatch.setattr(myxtts_ops, "load_ops", missing, raising=False)
    argv = ["profile", "--batch", "2", "--frames", "12", "--mels", "4", "--tokens", "4"]
    argv += ["--heads", "1", "--repeats", "2", "--warmup", "0", "--bandwidth-mib", "8"]
    argv += ["--rotate-mib", "1", "--impls", "reference", "--modes", "forward", "--terms"]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "XTTSLoss terms" in captured.out and "Traceback" not in captured.err


def test_plot_path_without_extension_names_the_file_written(tmp_path, capsys):
    """matplotlib adds .png to a path without an extension: the tool writes
    that file and says so (not the path as typed, which never exists)."""
    impl = "fused" if _fused_available() else "reference"
    argv = ["demo", "--steps", "1", "--batch", "2", "--frames", "10", "--implementation", impl]
    assert cli.main(argv + ["--plot", str(tmp_path / "chart")]) == 0
    assert (tmp_path / "chart.png").is_file() and not (tmp_path / "chart").exists()
    assert f"wrote {tmp_path / 'chart.png'}" in capsys.readouterr().out


def test_demo_summary_leaves_the_injected_steps_out():
    """The last-10-steps mean does not count the injected spike (a short run
    has it among the last 10 steps) or the NaN batch."""
    from myxtts_ops.tools.demo import _summarize

    history = [
        dict(
            step=s,
            mel_loss=82.5 if s == 21 else (3.0 if s <= 11 else 1.0),
            weight_changes=0,
            rejected_changes=0,
            nonfinite_steps=0,
            spike_count=0,
            current_mel_weight=2.5,
        )
        for s in range(1, 31)
    ]
    summary = _summarize(history, 1.0, "reference", nan_step=5, spike_step=21, spike_factor=50.0)
    assert summary["last_mel_loss"] == 1.0 and summary["first_mel_loss"] == 3.0


def test_demo_shortened_end_to_end(tmp_path, capsys):
    png = tmp_path / "demo.png"
    js = tmp_path / "demo.json"
    impl = "fused" if _fused_available() else "reference"
    rc = cli.main(
        [
            "demo",
            "--steps",
            "40",
            "--batch",
            "4",
            "--frames",
            "40",
            "--implementation",
            impl,
            "--plot",
            str(png),
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "demo: 40 steps" in out
    assert "mel weight" in out and "NaN targets injected" in out and "loss spike injected" in out
    assert png.stat().st_size > 1000
    data = json.loads(js.read_text())
    assert len(data["history"]) == 40
    summary = data["summary"]
    # NaN targets at step 18 (45%), a 50x spike at step 28 (70%): both seen, neither moves the weight.
    assert summary["nan_injected_step"] == 18 and summary["nonfinite_steps"] == [18]
    assert summary["spike_injected_step"] == 28 and summary["spike_steps"] == [28]
    assert not summary["weight_moved_on_nan"] and not summary["weight_moved_on_spike"]
    spike = data["history"][27]
    assert spike["mel_loss"] > 20 * data["history"][26]["running_mel_loss"]


def _count(text, needle):
    return sum(1 for line in text.splitlines() if needle in line)


def test_dedupe_startup_lines_ignores_log_prefixes():
    from myxtts_ops.tools.tf_import import dedupe_startup_lines

    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795638541.509425   10199 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1795638541.575206   10199 cpu_feature_guard.cc:227] optimized\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795638544.475231   10199 port.cc:153] oneDNN custom operations are on.\n"
    )
    out = dedupe_startup_lines(text)
    assert _count(out, "absl::InitializeLog") == 1
    assert _count(out, "oneDNN custom operations") == 1
    assert _count(out, "cpu_feature_guard") == 1


def test_tensorflow_startup_notices_print_once():
    """TF 2.21 logs its start-up notices from two shared libraries (each with its
    own absl), so a plain import prints them twice; the CLI's import prints each once."""
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    plain = subprocess.run(
        [sys.executable, "-c", "import tensorflow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=TESTS_DIR,
    )
    cli_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "myxtts_ops",
            "profile",
            "--batch",
            "2",
            "--frames",
            "8",
            "--mels",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--impls",
            "reference",
            "--modes",
            "forward",
            "--bandwidth-mib",
            "8",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=TESTS_DIR,
    )
    assert cli_run.returncode == 0, cli_run.stderr
    for needle in ("absl::InitializeLog", "oneDNN custom operations"):
        assert _count(cli_run.stderr, needle) <= 1, cli_run.stderr
        if _count(plain.stderr, needle) < 2:
            continue  # a TensorFlow that prints it once: nothing left to prove
        assert _count(cli_run.stderr, needle) == 1, cli_run.stderr


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_demo_few_steps_reports_only_what_it_injected(steps, tmp_path, capsys):
    """The NaN batch and the spike are two different steps; a run too short
    for the spike does not report one."""
    js = tmp_path / "d.json"
    impl = "fused" if _fused_available() else "reference"
    argv = ["demo", "--steps", str(steps), "--batch", "2", "--frames", "10"]
    argv += ["--implementation", impl, "--plot", str(tmp_path / "d.png"), "--json", str(js)]
    assert cli.main(argv) == 0
    summary = json.loads(js.read_text())["summary"]
    assert summary["nan_injected_step"] == 1
    assert summary["spike_injected_step"] == (None if steps == 1 else 2)
    out = capsys.readouterr().out
    assert ("loss spike injected" in out) == (steps > 1)
