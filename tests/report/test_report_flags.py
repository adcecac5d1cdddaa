"""The report says what happened: fit warnings flagged beside their table and figure and counted
under the title, and long tables folded with their full CSV written beside the report."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from stromalens.report.html import LONG_TABLE

from .test_report import parse


def _flags(html: str) -> list[str]:
    """The text of every flag box (``<div class="flag">``) in page order."""
    from html.parser import HTMLParser

    class Flags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found, self.depth = [], 0

        def handle_starttag(self, tag, attrs):
            if tag == "div" and dict(attrs).get("class") == "flag":
                self.found.append("")
                self.depth = 1
            elif self.depth and tag == "div":
                self.depth += 1

        def handle_endtag(self, tag):
            if self.depth and tag == "div":
                self.depth -= 1

        def handle_data(self, data):
            if self.depth:
                self.found[-1] += data

    parser = Flags()
    parser.feed(html)
    return parser.found


def test_fit_warnings_are_flagged_beside_their_table_and_figure(report_html):
    html = report_html.read_text(encoding="utf-8")
    page = parse(report_html)
    fig3 = page.sections["fig3"]["text"]
    # the figure shows every survival fit: both survival warnings are listed before it
    assert "2 fit warning(s) for the survival analysis" in fig3
    # the hazard-ratio table gets its own, and not the C-index fold's
    assert "1 fit warning(s) for survival_hr.csv" in fig3
    flags = _flags(html)
    hr_flag = next(f for f in flags if "survival_hr.csv" in f)
    assert "pfs hazard ratios: Cox fit did not converge cleanly" in hr_flag
    assert "fold 1 clinical_ai" not in hr_flag
    # the treatment model's degenerate estimate sits beside the treatment table
    assert "1 fit warning(s) for the treatment analysis" in fig3
    assert fig3.index("for the treatment analysis") < fig3.index("Treatment response model")
    # sections whose analyses did not warn carry no flag
    for name in ("tables12", "fig6", "fig7", "truth"):
        assert "fit warning" not in page.sections[name]["text"], name
    # the banner under the title counts them
    assert "3 fit warning(s) were raised (survival 2, treatment 1)" in html


def test_a_run_without_warnings_has_no_flags(tmp_path, train_dir):
    from stromalens.report import write_report

    run = tmp_path / "train"
    shutil.copytree(train_dir, run)
    empty = pd.DataFrame(columns=["analysis", "table", "source", "message"])
    empty.to_csv(run / "evaluation" / "fit_warnings.csv", index=False)
    html = write_report(run).read_text(encoding="utf-8")
    assert _flags(html) == []
    assert "Fit warnings." not in html


def test_a_long_table_is_folded_and_written_as_csv_beside_the_report(tmp_path, train_dir):
    from stromalens.report import write_report

    run = tmp_path / "train"
    shutil.copytree(train_dir, run)
    summary = pd.read_csv(run / "evaluation" / "attention_summary.csv")
    # 120 rows, as the demo's co-localisation summary: ten copies over made-up strata
    long = pd.concat(
        [summary.assign(grade_stratum=f"{g}-{k}") for k in range(10) for g in ("0-1",)],
        ignore_index=True,
    )
    assert len(long) == 120
    long.to_csv(run / "evaluation" / "attention_summary.csv", index=False)
    out = tmp_path / "report" / "index.html"
    write_report(run, out)
    html = out.read_text(encoding="utf-8")
    link = "tables/attention-co-localisation-summary.csv"
    assert f'href="{link}"' in html
    assert '<details class="long"><summary>120 rows' in html
    written = pd.read_csv(out.parent / link)
    assert len(written) == 120
    # the full-precision source, not the rounded cells of the page
    assert written["observed"].tolist() == pytest.approx(long["observed"].tolist(), abs=1e-12)
    # the short tables stay open: only this one is folded
    assert html.count('<details class="long">') == 1


def test_short_tables_stay_inline(report_html):
    html = report_html.read_text(encoding="utf-8")
    assert '<details class="long">' not in html
    assert not (report_html.parent / "tables").exists()
    assert LONG_TABLE == 20


def _predicted_without_targets(run, cohort="NEWCOH", n=15, seed=3):
    """``TRAIN/external/<cohort>/`` as ``stromalens predict`` writes it for a cohort given no
    targets (predictions.parquet: patient_id, model, target, y_pred; predict.json)."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = run / "external" / cohort
    folder.mkdir(parents=True)
    pids = [f"X{i:03d}" for i in range(n)]
    rows = [
        {"patient_id": p, "model": m, "target": t, "y_pred": float(rng.normal(loc))}
        for m in ("fusion", "wsi_clip")
        for t, loc in (("ers_caf", 0.0), ("lr", 0.1), ("heterogeneity", 1.6))
        for p in pids
    ]
    preds = pd.DataFrame(rows)
    preds.to_parquet(folder / "predictions.parquet", index=False)
    info = {"cohort": cohort, "targets": None, "patients": n + 2, "patients_with_slide": n,
            "skipped_no_slide": ["X900", "X901"], "models": ["fusion", "wsi_clip"]}  # fmt: skip
    (folder / "predict.json").write_text(json.dumps(info), encoding="utf-8")
    return preds


def test_predictions_of_a_cohort_without_targets_are_shown(tmp_path, train_dir):
    from stromalens.report import write_report

    run = tmp_path / "train"
    shutil.copytree(train_dir, run)
    (run / "evaluation" / "external.csv").unlink()  # no cohort had targets
    preds = _predicted_without_targets(run)
    page = parse(write_report(run))
    fig7 = page.sections["fig7"]
    assert "not run: evaluation/external.csv missing" not in fig7["text"]
    assert "external cohort NEWCOH: 15 patients predicted, no targets" in fig7["text"]
    assert "2 patient(s) without a slide not predicted" in fig7["text"]
    assert "Fig. 7b. Predictions of cohorts without targets" in fig7["text"]
    assert fig7["img"] == 1 and fig7["table"] == 1
    assert "figure failed" not in fig7["text"]
    # the table's numbers are those of the predictions
    from stromalens.report.html import prediction_summary

    summary = prediction_summary(preds, "NEWCOH").set_index(["model", "target"])
    part = preds[(preds["model"] == "fusion") & (preds["target"] == "lr")]["y_pred"]
    assert summary.loc[("fusion", "lr"), "n"] == 15
    assert summary.loc[("fusion", "lr"), "mean"] == pytest.approx(part.mean(), abs=1e-12)
    assert summary.loc[("fusion", "lr"), "sd"] == pytest.approx(part.std(ddof=1), abs=1e-12)
    # pandas: Series.quantile(0.25) (linear, numpy's default) — same rule
    assert summary.loc[("fusion", "lr"), "q1"] == pytest.approx(part.quantile(0.25), abs=1e-12)
    assert f"{part.mean():.3f}" in fig7["text"]


def test_a_cohort_with_targets_keeps_its_concordance_figure_beside_one_without(tmp_path, train_dir):
    from stromalens.report import write_report

    run = tmp_path / "train"
    shutil.copytree(train_dir, run)
    _predicted_without_targets(run)
    fig7 = parse(write_report(run)).sections["fig7"]
    assert "Fig. 7. Zero-shot external concordance" in fig7["text"]
    assert "Fig. 7b." in fig7["text"] and fig7["img"] == 2


def test_the_attention_geojson_is_linked_relative_to_the_report(train_dir, report_html):
    import os

    html = report_html.read_text(encoding="utf-8")
    assert "Attention as QuPath GeoJSON" in html
    for pid in ("P0001", "P0002", "P0003"):
        href = "../evaluation/attention/" + pid + ".geojson"
        assert f'<a href="{href}">{pid}</a>' in html
        assert os.path.isfile(report_html.parent / href)
