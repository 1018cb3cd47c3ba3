"""bench/throughput.py: the pure parts (worker list, nvidia-smi parsing, row maths) on the CPU."""

from __future__ import annotations

import pytest

from bench import throughput as tp


def test_parse_workers():
    assert tp.parse_workers("1,2,4") == [1, 2, 4]
    assert tp.parse_workers(" 3 , 1,3") == [3, 1]  # order kept, repeats dropped
    assert tp.parse_workers("2") == [2]
    for bad in ("", "0", "1,,2", "a", "-1", "1.5"):
        with pytest.raises(ValueError, match="comma list of counts >= 1"):
            tp.parse_workers(bad)


def test_parse_smi_is_robust():
    text = (
        "45, 10240\n"
        " 100 , 81000 \n"  # padded
        "[N/A], 512\n"  # a GPU without utilisation figures
        "\n"
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n"
        "0, 0\n"
        "7, 12"  # the last line, cut when the sampler was stopped
    )
    assert tp.parse_smi(text) == [(45.0, 10240.0), (100.0, 81000.0), (0.0, 0.0), (7.0, 12.0)]
    assert tp.parse_smi("") == [] and tp.parse_smi("101, 5\n5, -1\n") == []


def test_gpu_figures():
    assert tp.gpu_figures([(40.0, 100.0), (60.0, 300.0), (80.0, 200.0)]) == {
        "gpu_util_mean": 60.0,
        "gpu_mem_peak_mib": 300.0,
        "gpu_samples": 3,
    }
    assert tp.gpu_figures(None) == {"gpu_util_mean": None, "gpu_mem_peak_mib": None, "gpu_samples": 0}
    assert tp.gpu_figures([])["gpu_util_mean"] is None


def test_percentile():
    assert tp.percentile([], 50) is None
    assert tp.percentile([7.0], 90) == 7.0
    assert tp.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert tp.percentile([float(i) for i in range(1, 11)], 90) == pytest.approx(9.1)  # numpy's 'linear'


def test_row_figures_and_best_row():
    items = [
        {"name": "a", "status": "ok", "seconds": 10.0},
        {"name": "b", "status": "ok", "seconds": 20.0},
        {"name": "c", "status": "ok", "seconds": 30.0},
        {"name": "d", "status": "failed", "seconds": 1.0, "error": "worker process died (exit code -9)"},
        {"name": "e", "status": "skipped", "seconds": None},
    ]
    gpu = tp.gpu_figures([(50.0, 1000.0)])
    row = tp.row_figures(2, items, 45.0, gpu, 1, mps=True)
    assert row["objects_per_minute"] == 4.0  # 3 ok in 45 s
    assert row["ok"] == 3 and row["failed"] == 1 and row["wall_seconds"] == 45.0
    assert row["latency_median_s"] == 20.0 and row["latency_p90_s"] == 28.0  # failed items excluded
    assert row["gpu_util_mean"] == 50.0 and row["batch_exit_code"] == 1 and row["workers"] == 2
    assert row["mps"] is True
    assert row["errors"] == {"d": "worker process died (exit code -9)"}
    none = tp.row_figures(3, [], 10.0, tp.gpu_figures(None), 2)
    assert none["mps"] is False
    assert none["objects_per_minute"] == 0.0 and none["latency_median_s"] is None
    assert tp.best_row([row, none])["workers"] == 2 and tp.best_row([]) is None
    table = tp.table([row, none]).splitlines()
    assert len(table) == 3 and table[1].split()[:4] == ["2", "on", "4.0", "45.0"]
    assert table[2].split()[:2] == ["3", "off"] and table[2].split()[6] == "-"


def test_summary_mps_reads_the_batch_summary_meta():
    assert tp.summary_mps({"mps": {"used": True, "started": True}, "items": []}) is True
    assert tp.summary_mps({"mps": {"used": False, "reason": "--mps off"}}) is False
    assert tp.summary_mps({"items": []}) is False  # the plain path (--workers 1) records none
    assert tp.summary_mps({}) is False and tp.summary_mps(None) is False
    assert tp.build_parser().parse_args([]).mps == "auto"  # passed to every timed batch.py run
    assert tp.build_parser().parse_args(["--mps", "off"]).mps == "off"


def test_no_cuda_is_one_line_exit_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert tp.main(["--workers", "1,2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: bench/throughput.py needs a CUDA GPU"]
    assert tp.main(["--workers", "0"]) == 2
    assert "comma list" in capsys.readouterr().err


def test_bench_workers_rows_from_the_batches_and_no_work_folder_left(tmp_path, monkeypatch):
    """One timed batch per count, its row from the batch's summary; the outputs (GBs on a real run) go."""
    import json
    from pathlib import Path

    import torch

    work = tmp_path / "work"
    calls = []

    def prepare(args):
        (work / "in").mkdir(parents=True)
        return work, work / "in", [Path("a_rgba.png"), Path("b_rgba.png")], ["device=cuda"]

    def run_batch(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        n = int(argv[argv.index("--workers") + 1])
        out.mkdir(parents=True)
        items = [
            {"name": "a", "status": "ok", "seconds": 10.0 * n},
            {"name": "b", "status": "ok", "seconds": 30.0},
        ]
        (out / "batch_summary.json").write_text(json.dumps({"items": items}))
        return 0

    monkeypatch.setattr(tp, "_prepare", prepare)
    monkeypatch.setattr(tp, "run_batch", run_batch)
    monkeypatch.setattr(tp, "SMI_QUERY", ["/nonexistent/nvidia-smi"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = tp.build_parser().parse_args(["--no-warmup"])
    doc = tp.bench_workers(args, [1, 2])
    assert [c[c.index("--workers") + 1] for c in calls] == ["1", "2"]
    assert [(r["workers"], r["ok"], r["latency_median_s"]) for r in doc["rows"]] == [
        (1, 2, 20.0),
        (2, 2, 25.0),
    ]
    assert doc["rows"][0]["gpu_util_mean"] is None and doc["device"] == "NVIDIA H200"
    assert not work.exists()  # the timed batches' outputs are not left behind in the temp folder
    assert tp.build_parser().parse_args(["--keep"]).keep  # ... unless asked for


def test_images_must_be_at_least_one(capsys):
    assert tp.main(["--images", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --images 0: expected a count >= 1"
