"""'Try it': the end of every published chapter gives one experiment to run, the exact command,
and what to look for. The commands run the chapter (and what follows it) in a separate run
folder, so the book's own run is untouched, then compare the two runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Experiment:
    parameter: str  # "<stage>.<name>" or "generator.<knob>"
    value: str  # as typed on the command line
    look_for: str


EXPERIMENTS: dict[str, Experiment] = {
    "00_dataset": Experiment(
        "generator.context_bias", "0.9",
        "the measured P(preferred background | class) rises towards the asked bias; from chapter 1 on, CAMs that "
        "light up the background instead of the garments show as lower CAM precision."),
    "01_classifiers_and_cams": Experiment(
        "01_classifiers_and_cams.cam_scales", "[1.0]",
        "one scale instead of several: the CAM's best mIoU and its masks' detail, and how much of the difference "
        "survives the ensembles downstream."),
    "02_or_and_ensembles": Experiment(
        "02_or_and_ensembles.offset_source", "'cnn'",
        "the offset moved to the other source: whether AND stays the most precise variant and what happens to OR's "
        "recall."),
    "03_orandnet": Experiment(
        "03_orandnet.loss", "'softmax'",
        "ORANDNet's main model trained with the official softmax loss: the precision and mIoU of its maps against "
        "the per-pixel loss (images with a single class give the softmax loss no gradient)."),
    "04_refinement": Experiment(
        "04_refinement.pseudo_mask_background", "0.4",
        "a higher background score after the random walk: the written pseudo-masks gain precision and lose recall; "
        "chapter 5 then shows what that trade does to the segmentation model."),
    "05_segmentation_curriculum": Experiment(
        "05_segmentation_curriculum.schedules",
        "\"{'constant': [[0.0, 1.0]], 'curriculum': [[0.0, 0.25], [0.5, 1.0]]}\"",
        "a harsher curriculum (a quarter scale for half of training): the small-object recall of the models trained "
        "with it against the constant scale."),
    "06_precision_vs_miou": Experiment(
        "06_precision_vs_miou.fit_schedule", "'constant'",
        "the relation between pseudo-mask precision and the final model fitted on the constant-scale models instead."),
}


def try_it(stage: str, profile: str) -> str | None:
    """The 'Try it' section of a chapter (Markdown), or None for a stage without one."""
    e = EXPERIMENTS.get(stage)
    if e is None:
        return None
    first = "00_dataset" if e.parameter.startswith("generator.") else stage
    return "\n".join([
        "## Try it", "",
        f"Re-run this chapter, and those after it, with `{e.parameter.rpartition('.')[2]}` set to `{e.value}`, in a "
        "run folder of its own (the book's run stays as it is), then list what changed:", "",
        "```bash",
        f".venv/bin/orandnet run --profile {profile} --run-dir runs/try-{stage[:2]} --from {first} \\",
        f"    -p {e.parameter}={e.value}",
        f".venv/bin/orandnet compare runs/{profile} runs/try-{stage[:2]}",
        "```", "",
        f"What to look for: {e.look_for}",
    ])
