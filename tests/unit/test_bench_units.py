"""Unit tests of the benchmark's parts (scripts/ofa_ve_bench): no server, no timing.

Why: each part has a contract checked here on fixed inputs: the config copy round-trips
through protobuf and applies exactly the edits asked for; the in-process engine gets the
options a server instance gets; medians and ratios are right on hand-made numbers and the
report renders them; the one timing loop stops when told; the machine description names
the CPU; the workload is one list.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ofa_ve_bench import (
    benchmark,
    engine_runner,
    machine,
    profiler,
    results,
    server_run,
    soak,
    storm,
    traffic,
)
from ofa_ve_data import workload
from ofa_ve_ops import model_config, procfs
from ofa_ve_ops.paths import CONFIG_PBTXT, MODEL_NAME

pytest.importorskip("tritonclient.grpc.model_config_pb2")


# ------------------------------------------------------------------ model_config


def _parameters(config) -> dict[str, str]:
    """A `ModelConfig` message's `parameters` as name -> string value."""
    return {key: value.string_value for key, value in config.parameters.items()}


def test_config_round_trip_preserves_the_committed_config() -> None:
    committed = model_config.load(CONFIG_PBTXT)
    again = model_config.parse(model_config.to_text(committed))
    assert again == committed
    assert committed.name == MODEL_NAME
    assert committed.max_batch_size == 32
    assert "dtype" in _parameters(committed)


def test_config_edits_apply_and_leave_the_rest(tmp_path: Path) -> None:
    committed = model_config.load(CONFIG_PBTXT)
    edits = model_config.ConfigEdits(
        max_batch_size=64,
        instances=2,
        kind="KIND_CPU",
        queue_delay_us=1500,
        preferred_batch_sizes=[16, 64],
        parameters={"dtype": "float16", "image_path": "gpu"},
    )
    repo = model_config.make_model_repository(tmp_path / "repo", edits)
    edited = model_config.load(repo / MODEL_NAME / "config.pbtxt")
    assert edited.max_batch_size == 64
    assert [g.count for g in edited.instance_group] == [2]
    kind = edited.instance_group[0].kind
    assert edited.instance_group[0].Kind.Name(kind) == "KIND_CPU"
    assert edited.dynamic_batching.max_queue_delay_microseconds == 1500
    assert list(edited.dynamic_batching.preferred_batch_size) == [16, 64]
    params = _parameters(edited)
    assert params["dtype"] == "float16" and params["image_path"] == "gpu"
    # Everything not edited is as committed.
    before = _parameters(committed)
    assert {k: v for k, v in params.items() if k not in ("dtype", "image_path")} == {
        k: v for k, v in before.items() if k not in ("dtype", "image_path")
    }
    assert edited.input == committed.input and edited.output == committed.output
    assert edited.dynamic_batching.default_queue_policy == (
        committed.dynamic_batching.default_queue_policy
    )
    assert (repo / MODEL_NAME / "1" / "model.py").is_file()
    assert not list(repo.rglob("__pycache__"))
    queue = model_config.ConfigEdits(max_queue_size=4)
    small = model_config.apply(model_config.load(CONFIG_PBTXT), queue)
    policy = small.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 4
    assert policy.default_timeout_microseconds == (
        committed.dynamic_batching.default_queue_policy.default_timeout_microseconds
    )


def test_config_edit_of_nothing_is_the_committed_config(tmp_path: Path) -> None:
    repo = model_config.make_model_repository(tmp_path / "repo", model_config.ConfigEdits())
    assert model_config.load(repo / MODEL_NAME / "config.pbtxt") == model_config.load(CONFIG_PBTXT)


def test_config_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="KIND_TPU"):
        model_config.apply(model_config.load(), model_config.ConfigEdits(kind="KIND_TPU"))


def test_comma_separated_options_parse() -> None:
    assert results.listed("4, 8,", int) == [4, 8] and results.listed("") == []
    assert results.listed(" float32,int8 ") == ["float32", "int8"]


# ------------------------------------------------------------- engine parameters


@pytest.mark.timeout(300)
def test_the_engine_gets_the_options_a_server_instance_gets(tiny_model_dir) -> None:
    """`--param` values go through the model's parameter table, as config.pbtxt's do."""
    params = {"forward_batch_size": "3", "linear_backend": "aten", "dtype": "float32"}
    engine = engine_runner.build_engine(tiny_model_dir, "cpu", params)
    settings = engine_runner.engine_settings(engine)
    assert settings["forward_batch_size"] == 3 and settings["linear_backend"] == "aten"
    assert settings["dtype"] == "float32" and settings["device"] == "cpu"
    bigger = engine_runner.build_engine(tiny_model_dir, "cpu", params, forward_batch_size=5)
    assert bigger.forward_batch_size == 5  # an override wins
    items = workload.items(3)
    run = engine_runner.measure_engine(engine, items, batch_size=2, seconds=0.0)
    assert run.batch_size == 2 and len(run.latencies_ms) == 2 and run.items == 4


def test_the_benchmark_refuses_an_unknown_param(tmp_path: Path, capsys) -> None:
    argv = ["--model-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        benchmark.main([*argv, "--param", "no_such_knob=1"])
    assert "no_such_knob" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main([*argv, "--server-env", "NOVALUE"])
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_timed_stops_after_the_seconds_and_the_calls() -> None:
    calls: list[int] = []
    run = results.timed("x", 4, calls.append, seconds=0.0, min_calls=3)
    assert calls == [0, 1, 2] and run.items == 12 and len(run.latencies_ms) == 3
    calls.clear()
    run = results.timed("x", 2, calls.append, seconds=0.0, min_calls=2, warmup=3)
    assert calls == [0, 1, 2, 3, 4] and run.items == 4 and len(run.latencies_ms) == 2
    run = results.timed("x", 1, lambda n: None, seconds=0.02)
    assert run.seconds >= 0.02 and run.items == len(run.latencies_ms) >= 1


# ------------------------------------------------------------------- aggregation


def _round(n: int, a: float, b1: float, b4: float, c1: float, c4: float) -> dict:
    def engine(size: int, ips: float) -> dict:
        return {
            "batch_size": size,
            "items_per_s": ips,
            "call_p50_ms": 1000 * size / ips,
            "call_p99_ms": 2000 * size / ips,
        }

    def server(level: int, ips: float, errors: int = 0) -> dict:
        return {
            "mode": "concurrency",
            "level": float(level),
            "throughput": ips,
            "p50_ms": 1000 * level / ips,
            "p95_ms": 1.5 * 1000 * level / ips,
            "p99_ms": 2 * 1000 * level / ips,
            "server_queue_ms": 1.0,
            "server_compute_ms": 5.0,
            "avg_batch": float(level),
            "errors": errors,
        }

    return {
        "round": n,
        "load_before": 0.5 * n,
        "modelscope": {"items_per_s": a, "call_p50_ms": 1000 / a, "call_p99_ms": 1200 / a},
        "engine": [engine(1, b1), engine(4, b4)],
        "server": [server(1, c1), server(4, c4)],
    }


ROUNDS = [
    _round(1, a=2.0, b1=4.0, b4=8.0, c1=3.0, c4=12.0),
    _round(2, a=4.0, b1=6.0, b4=10.0, c1=5.0, c4=20.0),
    _round(3, a=3.0, b1=5.0, b4=9.0, c1=4.0, c4=15.0),
]


def test_aggregate_takes_medians_and_picks_the_best() -> None:
    agg = results.aggregate(ROUNDS)
    assert agg["rounds"] == 3
    assert agg["modelscope"]["items_per_s"] == 3.0
    assert [e["items_per_s"] for e in agg["engine"]] == [5.0, 9.0]
    assert agg["engine_best"]["batch_size"] == 4
    assert [p["throughput"] for p in agg["server"]] == [4.0, 15.0]
    assert agg["server_best"]["level"] == 4.0
    # p99 worst is the max over rounds, not the median.
    assert agg["server"][1]["p99_ms_worst"] == pytest.approx(2 * 4000 / 12.0)


def test_ratios_are_taken_within_each_round() -> None:
    ratios = results.aggregate(ROUNDS)["ratios"]
    # b/a per round: 8/2=4, 10/4=2.5, 9/3=3 -> median 3; c/a: 6, 5, 5; c/b: 1.5, 2, 1.667
    assert ratios["b/a"] == {"median": 3.0, "min": 2.5, "max": 4.0}
    assert ratios["c/a"] == {"median": 5.0, "min": 5.0, "max": 6.0}
    assert ratios["c/b"] == {"median": 1.667, "min": 1.5, "max": 2.0}


def test_a_level_with_errors_is_never_the_best() -> None:
    rounds = [_round(1, 2.0, 4.0, 8.0, 3.0, 12.0)]
    rounds[0]["server"][1]["errors"] = 1
    agg = results.aggregate(rounds)
    assert agg["server_best"]["level"] == 1.0
    assert agg["ratios"]["c/a"]["median"] == 1.5


def test_throughput_and_percentiles() -> None:
    t = results.Throughput("engine", 2, items=10, seconds=4.0, latencies_ms=[5, 1, 3, 2, 4])
    assert t.items_per_s == 2.5
    assert t.percentile(50) == 3 and t.percentile(99) == 5 and t.percentile(0) == 1
    row = t.summary()
    assert row["calls"] == 5 and row["call_p50_ms"] == 3 and "latencies_ms" not in row
    assert results.percentile([], 50) == 0.0 and results.median([]) == 0.0
    assert results.aggregate([]) == {"rounds": 0, "ratios": {}}


# ------------------------------------------------------------------------ report


def test_report_renders_measurements_and_ratios() -> None:
    out = {
        "title": "unit test",
        "rounds": ROUNDS,
        "summary": results.aggregate(ROUNDS),
        "machine": "a machine",
        "command": "benchmark --x",
        "engine_settings": {"dtype": "float32", "image_chunk_size": 2},
        "server": {
            "cold_start_to_ready_s": 12.34,
            "load_before_start": 1.0,
            "memory": {
                "processes": [
                    {"process": "tritonserver", "peak_rss_mib": 300.0},
                    {"process": "stub", "peak_rss_mib": 1100.0, "gpu_mib": 900},
                ],
                "peak_rss_total_mib": 1400.0,
            },
        },
    }
    text = results.report(out)
    assert text.startswith("### unit test")
    assert "| (a) ModelScope pipeline, 1 per call | 3.00 |" in text
    assert "| (b) engine, batch 4 (best) | 9.00 |" in text
    assert "| (c) Triton, c=4 | 15.00 |" in text
    assert "3.00x (rounds: 2.50-4.00)" in text
    assert "cold start to READY: 12.3 s" in text
    assert "stub 1100 MiB (GPU 900 MiB)" in text
    assert "| (c)/(b) server best / engine best | 1.67x (rounds: 1.50-2.00) |" in text
    assert "image_chunk_size" in text and "a machine" in text


# ----------------------------------------------------------------------- machine


def test_machine_description_has_the_cpu_model() -> None:
    from ofa_ve_engine import cpu_features

    facts = machine.describe("cpu")
    assert facts.cpu and facts.cores >= 1 and facts.gpu is None
    assert facts.cpu in str(facts) and "cores" in str(facts)
    if procfs.cpu_model():
        assert facts.cpu == procfs.cpu_model()
    assert set(facts.cpu_features) <= cpu_features.cpu_flags()
    assert all(flag in str(facts) for flag in facts.cpu_features)
    assert machine.load_average() >= 0.0
    assert len(procfs.load_average()) == 3


def test_procfs_process_group_and_sockets() -> None:
    import os

    assert os.getpid() in procfs.process_group(os.getpgid(0))
    assert os.getpid() in procfs.pids()
    assert isinstance(procfs.listening_sockets(), dict)
    assert isinstance(procfs.socket_inodes(os.getpid()), set)


def test_procfs_cpu_seconds_and_steal() -> None:
    import os
    import time

    used = procfs.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn CPU: the reading must move with it
        pass
    assert procfs.cpu_seconds(os.getpid()) > used > 0.0
    assert procfs.cpu_seconds(2**22 + 1) == 0.0  # above Linux's largest pid: gone
    before = procfs.cpu_times()
    assert len(before) >= 8 and procfs.steal_fraction(before, before) == 0.0
    after = list(before)
    after[0] += 30  # 30 ticks of user time, 10 stolen
    after[7] += 10
    assert procfs.steal_fraction(before, after) == pytest.approx(0.25)


def test_gpu_memory_csv_parse() -> None:
    assert server_run.parse_gpu_memory("123, 456\n7,8\nbad line\n") == {123: 456, 7: 8}


# ---------------------------------------------------------------------- workload


def test_one_workload_feeds_every_tool() -> None:
    items = workload.items(8)
    assert len(items) == 8
    assert all(isinstance(image, bytes) and image for image, _, _ in items)
    assert {bool(p) for _, _, p in items} == {True, False}
    assert [p for p, _, _ in workload.path_items(3, "jpeg")] == workload.image_paths("jpeg")[:3]
    shuffled = workload.items(8, seed=1)
    assert sorted(shuffled) == sorted(items) and workload.items(8, seed=1) == shuffled
    pairs = workload.agreement_items()
    assert len(pairs) == len(workload.image_paths()) * len(workload.AGREEMENT_HYPOTHESES)
    payloads = soak.load_payloads(workload.IMAGES_DIR)
    texts = {h for h, _ in workload.LOAD_TEXTS}
    assert {p.hypothesis.decode() for p in payloads if not p.hostile} <= texts


def test_load_requests_carry_a_premise_only_where_one_is_given() -> None:
    """soak and storm build requests one way (`traffic.inputs`): items along the batch
    dimension, PREMISE absent unless an item has one (then empty for the others)."""
    plain = traffic.inputs([traffic.Payload(b"jpeg", b"A cat.")] * 2)
    assert [t.name() for t in plain] == ["IMAGE", "HYPOTHESIS"] and plain[0].shape() == [2, 1]
    mixed = traffic.inputs(
        [traffic.Payload(b"a", b"A cat."), traffic.Payload(b"b", b"A dog.", b"A park.")]
    )
    assert [t.name() for t in mixed] == ["IMAGE", "HYPOTHESIS", "PREMISE"]
    for url in ("10.0.0.5:8001", "example.com:8001", "[2001:db8::1]:8001"):
        with pytest.raises(ValueError, match="loopback only"):
            traffic.check_loopback(url)


def test_large_jpegs_are_camera_sized() -> None:
    from io import BytesIO

    from PIL import Image

    (one,) = workload.large_jpegs(((800, 600),))
    with Image.open(BytesIO(one)) as img:
        assert img.format == "JPEG" and img.size == (800, 600)


def test_storm_verdicts_from_outcomes() -> None:
    """A refusal within `prompt` seconds is at once; later ones are requests that waited."""
    outcomes = [
        (3.0, "answered", ""),
        (0.01, "UNAVAILABLE", "[request id: <id_unknown>] Exceeds maximum queue size"),
        (30.2, "UNAVAILABLE", "[request id: 7] Request timeout expired"),
        (5.0, "answered", ""),
    ]
    summary = storm.summarize(outcomes, requests=5, prompt_s=2.0, probe_s=0.3)
    assert summary["missing"] == 1 and summary["answered"] == 2 and summary["refused"] == 2
    assert summary["refused_at_once"] == 1 and summary["refused_late"] == 1
    assert summary["refused_late_max_s"] == 30.2 and summary["answered_max_s"] == 5.0
    assert summary["refusals"] == {
        "UNAVAILABLE: Exceeds maximum queue size": 1,
        "UNAVAILABLE: Request timeout expired": 1,
    }
    with pytest.raises(ValueError, match="loopback only"):
        storm.storm("10.0.0.1:8001", requests=1, deadline_s=1, prompt_s=1)
    with pytest.raises(ValueError, match=r"items must be 1\.\.32"):
        storm.storm("127.0.0.1:8001", requests=1, deadline_s=1, prompt_s=1, items=33)


def test_profiler_cli_refuses_what_it_cannot_measure(tmp_path: Path) -> None:
    for argv in ([], ["--model-dir", str(tmp_path), "--dtypes", "float16"]):
        with pytest.raises(SystemExit):
            profiler.main(argv)


# Lines as oneDNN 3.x prints them (the second with ONEDNN_VERBOSE_TIMESTAMP=1).
VERBOSE_SAMPLE = """\
onednn_verbose,v1,info,oneDNN v3.7.1 (commit 8d263e6)
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,exec_time
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_inference,\
src:f32::blocked:acdb::f0 wei:f32:a:blocked:Acdb64a::f0,attr-post-ops:eltwise_relu,\
alg:convolution_direct,mb1_ic3oc64_ih480oh240kh7sh2dh0ph3_iw480ow240kw7sw2dw0pw3,7.25
onednn_verbose,1733100000.5,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx10_1_512_amx,\
forward_inference,src:bf16::blocked:acdb::f0,attr-post-ops:binary_add:bf16:14,\
alg:convolution_direct,mb2_g2ic64oc256_ih30oh30kh1sh1dh0ph0_iw30ow30kw1sw1dw0pw0,0.5
onednn_verbose,v1,primitive,exec,cpu,reorder,simple:any,undef,src:f32::blocked:abcd,,,1x3x4x4,0.01
onednn_verbose,v1,graph,exec,cpu,partition,1,fused,op,data,lt,strict,dnnl,0.3
"""


def test_profiler_reads_onednn_verbose_exec_lines() -> None:
    prims = profiler.parse_verbose(VERBOSE_SAMPLE)
    assert [(p["kind"], p["ms"]) for p in prims] == [
        ("convolution", 7.25),
        ("convolution", 0.5),
        ("reorder", 0.01),
    ]
    assert prims[0]["implementation"] == "brg_conv_fwd:avx512_core"
    # 7x7 stride 2 from 3 to 64 channels at 240 px out: 2 * 3*64*49 * 240*240.
    assert prims[0]["gflop"] == pytest.approx(2 * 3 * 64 * 49 * 240 * 240 / 1e9)
    # Two groups: each output channel sees a half of the input channels.
    assert prims[1]["gflop"] == pytest.approx(2 * 2 * 32 * 256 * 900 / 1e9)
    assert prims[2]["gflop"] == 0.0


def test_profiler_kinds_of_operators() -> None:
    assert profiler.kind_of("mkldnn::_convolution_pointwise") == "convolution"
    assert profiler.kind_of("quantized::conv2d_relu") == "convolution"
    assert profiler.kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profiler.kind_of("aten::addmm") == "linear"
    assert profiler.kind_of("aten::native_layer_norm") == "norm"
    assert profiler.kind_of("aten::gelu") == "other operators"


@pytest.mark.timeout(300)
def test_profiler_splits_a_real_engine_item(tiny_model_dir, capfd) -> None:
    """On the tiny architecture: the convolution primitives are seen through oneDNN's
    verbose mode (their exec times and GFLOP), the profiler's kinds are filled, and the
    report says what bounds what (no figure is asserted)."""
    split = profiler.measure_split(tiny_model_dir, "float32", passes=1, count=2)
    assert split["items"] == 2 and split["wall_ms"] > 0 and split["profiled_wall_ms"] > 0
    assert split["conv_exec_ms"] > 0 and split["conv_gflop"] > 0 and split["conv_implementations"]
    assert {"convolution", "linear", "attention"} <= set(split["op_self_ms"])
    assert "onednn_verbose" not in capfd.readouterr().out  # captured, not printed
    assert "kernels only" in profiler.split_report([split])
    assert split["kernel_bound_items_per_s"] > 0


def test_reference_worker_loop_answers_every_job_line() -> None:
    """One answer line per job line, a failed job answered with its traceback."""
    import io
    import json

    from ofa_ve_reference import worker

    jobs = io.StringIO('{"job": "no_such_job"}\n\nnot json\n')
    answers = io.StringIO()
    worker.serve(jobs, answers)
    lines = [json.loads(line) for line in answers.getvalue().splitlines()]
    assert len(lines) == 2 and all(set(answer) == {"error"} for answer in lines)
    assert "KeyError: 'no_such_job'" in lines[0]["error"]
    assert "JSONDecodeError" in lines[1]["error"]
    assert set(worker.JOBS) == {"pipeline", "write_checkpoint", "loading_report"}


def test_reference_worker_reports_a_failed_job_and_keeps_serving(tmp_path: Path) -> None:
    """The real worker process: a failing job raises for that call only, and a worker
    that died is replaced on the next call; close() leaves no process behind."""
    import os
    import signal

    from ofa_ve_reference.worker import ReferenceJobError, ReferenceWorker
    from support.waiting import wait_for

    with ReferenceWorker(log_path=tmp_path / "worker.log") as reference:
        for _ in range(2):
            with pytest.raises(ReferenceJobError, match="KeyError: 'no_such_job'"):
                reference.call("no_such_job", timeout_s=60)
        first = reference.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: procfs.process_state(first) in (None, "Z"), "the worker to die", 30)
        with pytest.raises(ReferenceJobError, match="KeyError: 'no_such_job'"):
            reference.call("no_such_job", timeout_s=60)
        second = reference.pid
        assert second not in (None, first)
    assert reference.pid is None and procfs.process_state(second) in (None, "Z")


def test_reference_worker_killed_when_a_job_outlasts_its_timeout(tmp_path: Path) -> None:
    """A job past its timeout raises TimeoutError and kills the worker (by PID), so no
    late answer is read as the next job's; the next call starts a fresh worker."""
    from ofa_ve_reference.worker import ReferenceJobError, ReferenceWorker

    with ReferenceWorker(log_path=tmp_path / "worker.log") as reference:
        with pytest.raises(ReferenceJobError, match="KeyError: 'no_such_job'"):
            reference.call("no_such_job", timeout_s=60)  # the worker is up
        first = reference.pid
        # Writing a checkpoint imports ModelScope and builds its 33M-parameter network:
        # seconds, where 0.2 s is given.
        with pytest.raises(TimeoutError, match="'write_checkpoint' took too long"):
            reference.write_checkpoint(tmp_path / "never", seed=1, timeout_s=0.2)
        assert reference.pid is None and procfs.process_state(first) in (None, "Z")
        with pytest.raises(ReferenceJobError, match="KeyError: 'no_such_job'"):
            reference.call("no_such_job", timeout_s=60)
        assert reference.pid not in (None, first)
    assert not (tmp_path / "never").exists()
