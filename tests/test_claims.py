"""'What reproduces' and the introduction's headline, from a hand-made summary."""

from orandnet_lib.book.claims import claims, headline, reproduces_page


def scores(miou, precision, recall, curve=((100, 0), (0, 100))):
    """A summary entry; ``curve``: (recall, precision) points over increasing background scores."""
    return {"miou": miou, "precision": precision, "recall": recall, "threshold": 30.0, "unpredicted": 0,
            "empty_maps": 0.0, "curve": {"recall": [r for r, _ in curve], "precision": [q for _, q in curve]}}


SUMMARY = {
    "profile": "smoke",
    # The claims compare at equal recall (precision) along these curves, by hand:
    # and+offset at cnn's recall 50: between (60, 44) and (40, 52) -> 48, +8.0 over cnn's 40; at vit's 45: 50 vs 35.
    # or+offset at cnn's precision 40: between (70, 35) and (50, 45) -> recall 60, +10.0 over 50; at vit's 35: 70.
    # orandnet at cnn's recall 50: 44, +4.0 over 40; best mIoU 31 - 30 = +1.0.
    "cams": {"cnn": scores(30, 40, 50), "vit": scores(25, 35, 45),
             "and+offset": scores(28, 48, 38, ((80, 30), (60, 44), (40, 52), (20, 60))),
             "or+offset": scores(27, 30, 60, ((90, 20), (70, 35), (50, 45))),
             "orandnet": scores(31, 44, 42, ((70, 35), (50, 44), (30, 50)))},
    "segmentation_headline": {"baseline": "cnn", "other": "orandnet", "schedule": "curriculum",
                              "difference": {"n": 3, "mean": 1.5, "se": 0.2, "t": 7.5, "df": 2, "p": 0.017,
                                             "low": 0.64, "high": 2.36}},
    "segmentation_schedules": [{"training set": "cnn", "measure": "mIoU", "comparison": "cnn: curriculum - constant",
                                "n": 3, "mean": -0.4, "se": 0.5, "t": -0.8, "df": 2, "p": 0.5, "low": -2.5,
                                "high": 1.7}],
    "precision_vs_miou": {"fits": {"precision": {"error": "needs at least 3 sets, has 2"}}},
}


def test_each_claim_gets_its_effect_interval_and_verdict():
    rows = {c.claim.split(" (")[0]: c for c in claims(SUMMARY)}
    and_row = rows["AND is more precise than either single CAM"]
    assert and_row.verdict == "holds in this run"
    assert and_row.effect.startswith("at cnn's recall 50.0 %: and+offset 48.0 % vs 40.0 % (+8.0 points); "
                                     "at vit's recall 45.0 %: and+offset 50.0 % vs 35.0 % (+15.0 points)")
    assert "0 classes never predicted" in and_row.effect
    or_row = rows["OR has a higher recall than either single CAM"]
    assert "or+offset recall 60.0 % vs 50.0 % (+10.0 points)" in or_row.effect and or_row.verdict == "holds in this run"
    orand = rows["ORANDNet is more precise than the best single CAM"]
    assert orand.effect.startswith("at cnn's recall 50.0 %: precision 44.0 % vs 40.0 % (+4.0 points); best mIoU +1.0")
    assert orand.verdict == "holds in this run"
    # a curve that never reaches the baseline's recall does not hold, and says why
    short = {**SUMMARY, "cams": {**SUMMARY["cams"], "orandnet": scores(31, 60, 20, ((30, 50), (20, 60)))}}
    row = next(c for c in claims(short) if c.claim.startswith("ORANDNet"))
    assert "not reached" in row.effect and row.verdict == "does not hold in this run"
    seg = rows["Segmentation trained on ORANDNet's pseudo-masks beats the single-CNN baseline"]
    assert seg.verdict == "reproduces" and seg.interval.startswith("[+0.6, +2.4] (n = 3 seeds")
    curriculum = rows["The scale-scheduling curriculum helps"]
    assert curriculum.verdict == "not resolved: the interval includes 0"
    fit = rows["More precise pseudo-masks give a better segmentation model"]
    assert fit.verdict == "not measured" and "needs at least 3 sets" in fit.interval


def test_a_comparison_without_spread_has_no_p_value():
    summary = {"segmentation_schedules": [{"training set": "gt", "measure": "small-object recall", "n": 2,
                                           "comparison": "gt: curriculum - constant", "mean": 0.0, "se": 0.0,
                                           "t": None, "df": 1, "p": None, "low": 0.0, "high": 0.0}]}
    (row,) = claims(summary)
    assert row.interval == "[+0.0, +0.0] (n = 2 seeds, p undefined: no spread)"
    assert row.verdict == "not resolved: the interval includes 0"


def test_pages_link_every_claim_to_its_chapter():
    page = reproduces_page(SUMMARY)
    claims_part, _, operating_point = page.partition("## The operating point of this run")
    assert claims_part.count("{doc}`../executed/") == len(claims(SUMMARY))
    assert operating_point  # the operating-point table follows the claims (tests/test_operating_point.py)
    assert "{doc}`../executed/05_segmentation_curriculum`" in page
    text = headline(SUMMARY)
    assert "orandnet - cnn: +1.5 mIoU points" in text and "**reproduces**" in text
    assert ("Of 6 claims: 1 reproduce with an interval, 3 hold in this single run, 1 are not resolved by this run's "
            "seeds, 1 were not measured.") in text
    assert "No run" in headline({"profile": "smoke"})


def test_stage_2_3_claims_pair_by_whole_pipeline_replicate():
    """Three replicates whose cnn is 40, 39 and 38 % precise at recall 50 while AND's curve gives 48
    there: AND beats cnn by +8, +9, +10 (mean +9, sd 1, t interval 9 +- 4.303 * 1 / sqrt(3)) and vit by
    +15 each time: both intervals exclude 0, so the claim reproduces over replicates."""
    import copy

    summary = copy.deepcopy(SUMMARY)
    runs = {}
    for r, cnn_precision in ((1, 39), (2, 38)):
        cams = copy.deepcopy(SUMMARY["cams"])
        cams["cnn"]["precision"] = cnn_precision
        runs[str(r)] = {"cams": cams}
    summary["replicates"] = {"n": 3, "runs": runs}
    summary["segmentation_replicates"] = 3
    row = next(c for c in claims(summary) if c.claim.startswith("AND is more precise"))
    assert row.verdict == "reproduces"
    assert row.interval.startswith("against cnn: [+6.5, +11.5] (n = 3 replicates") and "against vit: [+15.0, +15.0]" in row.interval
    seg = next(c for c in claims(summary) if c.chapter == "05" and "beats" in c.claim)
    assert "over 3 whole-pipeline replicates" in seg.effect and "(n = 3 replicates" in seg.interval
    assert "Every interval is over 3 whole-pipeline replicates" in reproduces_page(summary)
