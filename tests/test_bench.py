import numpy as np
import pytest
import torch

from orandnet_lib import bench
from orandnet_lib.methods import pretrain


def test_kernels_agree_with_their_naive_references_and_report_ratios():
    rng = np.random.default_rng(0)
    rows = [bench.bench_ensemble(rng), *bench.bench_random_walk(rng, sizes=(32, 48)), *bench.bench_confusion(rng, sizes=(16,)),
            bench.bench_relation_head(rng)]
    for row in rows:  # each function asserts that the fast path equals its naive reference before timing
        assert set(row) >= {"kernel", "unit", "value", "naive_value", "speedup"}
        assert row["value"] > 0 and row["naive_value"] > 0
    text = bench.format_table({"stages": [{"stage": "00_dataset", "wall_time_s": 1.0, "cpu_time_s": 2.0, "peak_rss_mb": 3.0}],
                               "kernels": rows, "cam_scaling": []})
    assert "00_dataset" in text and "random walk at 48 px" in text


def test_stage_table_sets_each_stage_beside_its_times_before_the_speed_work_and_before_calibration():
    text = bench.format_table({"stages": [
        {"stage": "00_dataset", "wall_time_s": 4.0, "cpu_time_s": 2.0, "peak_rss_mb": 3.0, "wall_time_before_s": 4.7,
         "wall_time_s_before_speed": 14.1, "cpu_time_s_before_speed": 11.3, "peak_rss_mb_before_speed": 879},
        {"stage": "05_segmentation_curriculum", "wall_time_s": 300.0, "cpu_time_s": 500.0, "peak_rss_mb": 900.0,
         "wall_time_before_s": 663.4, "wall_time_s_before_speed": 818.9, "cpu_time_s_before_speed": 1568.7,
         "peak_rss_mb_before_speed": 1284},
        {"stage": "00_dataset", "replicate": 1, "wall_time_s": 5.0, "cpu_time_s": 5.0, "peak_rss_mb": 7.0}],
        "kernels": [], "cam_scaling": []})
    lines = text.splitlines()
    assert "before the speed work" in lines[0] and "before calibration" in lines[1]
    assert lines[2].split() == ["00_dataset", "4.0", "2.0", "3", "14.1", "11.3", "879", "4.7"]
    assert lines[4].split() == ["00_dataset", "(replicate", "1)", "5.0", "5.0", "7", "-", "-", "-", "-"]
    # totals: sums of seconds, the largest peak; each before-column over the rows that have it
    assert lines[5].split() == ["all", "stages", "309.0", "507.0", "900", "833.0", "1580.0", "1284", "668.1"]


def test_stage_table_reads_the_run_and_each_replicate(tmp_path, monkeypatch):
    """A replicated run's stages 0-4 ran again in replicates/r<r>: the table has a row per
    stage and replicate, and only the run's own rows stand beside the time before calibration."""
    from orandnet_lib.core import store

    monkeypatch.setattr(bench, "ROOT", tmp_path)
    run = tmp_path / "runs" / "default"
    for folder, stage, wall in ((run, "00_dataset", 5.0), (run, "05_segmentation_curriculum", 100.0),
                                (run / "replicates" / "r1", "00_dataset", 6.0),
                                (run / "replicates" / "r2", "00_dataset", 7.0)):
        store.write_json(folder / stage / "manifest.json", {"wall_time_s": wall, "cpu_time_s": 2 * wall,
                                                           "peak_rss_mb": 10 * wall})
    rows = bench.stage_table("default")
    assert [(r["stage"], r["replicate"], r["wall_time_s"]) for r in rows] == [
        ("00_dataset", 0, 5.0), ("05_segmentation_curriculum", 0, 100.0), ("00_dataset", 1, 6.0), ("00_dataset", 2, 7.0)]
    assert rows[0]["wall_time_before_s"] is not None and rows[2]["wall_time_before_s"] is None
    # issue 25's baseline, from book/calibration.json, stands beside the run's own rows only
    assert (rows[0]["wall_time_s_before_speed"], rows[0]["cpu_time_s_before_speed"], rows[0]["peak_rss_mb_before_speed"]) \
        == (14.1, 11.3, 879)
    assert rows[2]["wall_time_s_before_speed"] is None
    text = bench.format_table({"stages": rows, "kernels": [], "cam_scaling": []}).splitlines()
    assert text[4].startswith("00_dataset (replicate 1)") and text[5].startswith("00_dataset (replicate 2)")
    assert text[6].split()[2:5] == ["118.0", "236.0", "1000"]


def test_transfer_section_reads_both_runs_and_lists_each_pretraining(tmp_path, monkeypatch):
    import torch

    from orandnet_lib.core import store
    from orandnet_lib.methods import pretrain

    monkeypatch.setattr(bench, "ROOT", tmp_path)
    summary = {"cams": {"cnn": {"miou": 36.0}, "vit": {"miou": 20.0}}}
    store.write_json(tmp_path / "runs" / "default" / "summary.json", summary)
    store.write_json(tmp_path / "held" / "summary.json", {"cams": {"cnn": {"miou": 30.0}}})
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    key = pretrain.weights_key("aux-broad", "cnn", "resnet18", {})
    (tmp_path / "cache" / "pretrained").mkdir(parents=True)
    torch.save({"state_dict": {}, "identity": key.to_dict(), "history": [], "val_accuracy": 76.2, "seconds": 384.0,
                "train_config": {}}, tmp_path / "cache" / "pretrained" / "cnn-x.pt")
    (tmp_path / "cache" / "pretrained" / "cnn-y.partial.pt").write_bytes(b"")  # an unfinished one is not listed
    out = bench.transfer("default", tmp_path / "held")
    rows = {r["quantity"]: r for r in out["rows"]}
    assert rows["CNN CAM mIoU (train)"]["default data"] == "36.0 (yes)"
    assert rows["CNN CAM mIoU (train)"]["held-out domain"] == "30.0 (no)"
    assert out["pretrainings"] == [{"file": "cnn-x.pt", "recipe": "aux-broad", "catalogue": "broad", "exclude": [],
                                    "val_accuracy": 76.2, "seconds": 384.0}]
    text = bench.format_table({"stages": [], "kernels": [], "cam_scaling": [], "transfer": out})
    assert "operating point (issue 24 targets)" in text and "broad" in text and "384 s" in text


def test_step_flops_counts_forward_and_backward_products():
    import torch

    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)  # no gradient for the input: backward computes the weight's only
    flops = bench.step_flops(layer, lambda: layer(x).sum())
    assert flops == 2 * 5 * 4 * 3 + 2 * 5 * 4 * 3  # forward x W^T, backward grad^T x
    assert layer.weight.grad is None, "the counting pass leaves no gradient behind"


def test_the_training_table_sets_each_step_against_the_peaks():
    text = bench.format_table({"stages": [], "kernels": [
        {"kernel": "CNN classifier training step, batch 32 at 96 px (bf16 autocast vs fp32)", "unit": "images/s",
         "value": 512.0, "naive_value": 320.0, "speedup": 1.6, "gflop_per_step": 15.6, "gflops_fp32": 156.0,
         "gflops_bf16": 249.6, "fraction_of_fp32_peak_fp32": 0.5, "fraction_of_bf16_peak_bf16": 0.125,
         "fraction_of_bf16_peak_fp32": 0.078}], "cam_scaling": [],
        "machine": {"matmul_gflops": {"fp32": 312.0, "bf16": 1996.8}}})
    row = next(line for line in text.splitlines() if line.strip().startswith("CNN classifier ") and "15.6" in line)
    assert row.split()[-5:] == ["15.6", "156", "250", "0.50", "0.12"]
    assert "fp32 312, bf16 1997 GFLOP/s" in text


def test_a_cpu_without_bfloat16_units_is_benchmarked_in_fp32_and_says_so(monkeypatch):
    """Emulated bf16 would take minutes per step: its fields are None and the table shows dashes."""
    import torch

    layer = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    monkeypatch.setattr(bench, "_training_kernels", lambda rng: {"CNN classifier": (layer, lambda: layer(x).square().mean(), 8, "batch 8")})
    peaks = bench.matmul_peaks(n=64, bf16=False)
    assert peaks["bf16"] is None and peaks["fp32"] > 0
    [row] = bench.bench_bf16_training(np.random.default_rng(0), peaks, bf16=False)
    assert "bf16 not timed" in row["kernel"] and "naive_value" not in row
    assert row["gflops_bf16"] is None and row["fraction_of_bf16_peak_bf16"] is None and row["loss_bf16"] is None
    assert row["gflop_per_step"] == 2 * (2 * 8 * 64 * 64) / 1e9  # forward and the weight's gradient
    assert row["fraction_of_fp32_peak_fp32"] == row["gflops_fp32"] / peaks["fp32"]
    text = bench.format_table({"stages": [], "kernels": [row], "cam_scaling": [], "machine": {"matmul_gflops": peaks}})
    assert "bf16 - GFLOP/s" in text
    parts = next(line for line in text.splitlines() if line.startswith("  CNN classifier ")).split()
    assert parts[-3] == "-" and parts[-1] == "-" and parts[-2] == f"{row['fraction_of_fp32_peak_fp32']:.2f}"


def test_a_compiled_step_is_timed_beside_eager_with_its_compile_cost(monkeypatch):
    """dynamo's "eager" backend: the bookkeeping of the compiled-step rows without a C++ compilation."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    monkeypatch.setattr(bench, "_training_kernels", lambda rng: {"ViT classifier": (layer, lambda: layer(x).square().mean(), 8, "batch 8")})
    peaks = {"fp32": 100.0, "bf16": None}
    [row] = bench.bench_compiled_training(np.random.default_rng(0), peaks, backend="eager", min_seconds=0.05)
    assert row["backend"] == "eager" and "torch.compile vs eager" in row["kernel"]
    assert row["value"] == 8 / row["step_seconds"] and row["naive_value"] == 8 / row["eager_step_seconds"]
    assert row["speedup"] == row["eager_step_seconds"] / row["step_seconds"]
    assert row["loss_compiled"] == pytest.approx(row["loss_eager"], rel=1e-6)
    gain = row["eager_step_seconds"] - row["step_seconds"]
    assert row["break_even_steps"] == (row["compile_seconds"] / gain if gain > 0 else None)
    assert row["gflops_eager"] == 2 * (2 * 8 * 64 * 64) / 1e9 / row["eager_step_seconds"]
    text = bench.format_table({"stages": [], "kernels": [row], "cam_scaling": []})
    line = next(t for t in text.splitlines() if t.startswith("  ViT classifier"))
    assert line.split()[2:4] == [f"{row['eager_step_seconds']:.3f}", f"{row['step_seconds']:.3f}"]


def test_training_kernels_have_the_default_profiles_shapes():
    """make bench times each network at the shape the default profile trains (its DeepLab ran at
    stage 5's own default [16, 32, 64, 128], a third of the default profile's FLOPs, and its ViT
    without the ResNet stem)."""
    from orandnet_lib.book.profiles import load_profile
    from orandnet_lib.nets.classifiers import ResNetStem

    profile = load_profile("default")["stages"]
    shape = {k: tuple(v) for k, v in profile["05_segmentation_curriculum"]["backbone_kwargs"].items()}
    assert shape == bench.DEFAULT_RESNET
    assert profile["01_classifiers_and_cams"]["vit_stem"] == "resnet"
    kernels = bench._training_kernels(np.random.default_rng(0))
    deeplab, vit = kernels["DeepLab"][0], kernels["ViT classifier"][0]
    widths = sorted({m.out_channels for m in deeplab.modules() if isinstance(m, torch.nn.Conv2d)})
    assert 256 in widths and isinstance(vit.vit.patch_embed.backbone, ResNetStem)
    aux, _, images, batch = kernels["aux pretraining"]
    recipe = pretrain.AUX_RECIPES.get(load_profile("default")["stages"]["01_classifiers_and_cams"]["cnn_pretrained"])
    assert (images, batch) == (recipe.batch_size, f"batch {recipe.batch_size} at {recipe.image_size} px")
    assert aux.classifier.out_channels == len(recipe.classes) and aux.stride == 32  # ImageNet-style, as pretrain trains it
