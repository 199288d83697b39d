import numpy as np

from orandnet_lib import bench


def test_kernels_agree_with_their_naive_references_and_report_ratios():
    rng = np.random.default_rng(0)
    rows = [bench.bench_ensemble(rng), *bench.bench_random_walk(rng, sizes=(32, 48)), *bench.bench_confusion(rng, sizes=(16,))]
    for row in rows:  # each function asserts that the fast path equals its naive reference before timing
        assert set(row) >= {"kernel", "unit", "value", "naive_value", "speedup"}
        assert row["value"] > 0 and row["naive_value"] > 0
    text = bench.format_table({"stages": [{"stage": "00_dataset", "wall_time_s": 1.0, "cpu_time_s": 2.0, "peak_rss_mb": 3.0}],
                               "kernels": rows, "cam_scaling": []})
    assert "00_dataset" in text and "random walk at 48 px" in text


def test_stage_table_sets_each_stage_beside_its_time_before_calibration():
    text = bench.format_table({"stages": [
        {"stage": "00_dataset", "wall_time_s": 4.0, "cpu_time_s": 2.0, "peak_rss_mb": 3.0, "wall_time_before_s": 4.7},
        {"stage": "05_segmentation_curriculum", "wall_time_s": 300.0, "cpu_time_s": 500.0, "peak_rss_mb": 900.0,
         "wall_time_before_s": 663.4}], "kernels": [], "cam_scaling": []})
    lines = text.splitlines()
    assert "before calibration" in lines[0]
    assert lines[1].split()[0] == "00_dataset" and lines[1].split()[-1] == "4.7"
    assert lines[3].startswith("all stages") and lines[3].split()[2] == "304.0" and lines[3].split()[-1] == "668.1"
