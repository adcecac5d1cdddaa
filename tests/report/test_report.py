"""The HTML report of a complete run: self-contained, every section filled, the headline's
numbers are those of ``evaluation/metrics.json``; missing inputs become "not run" notes."""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from stromalens.rundir import RunFiles

SECTIONS = (
    "headline",
    "configuration",
    "fig1",
    "fig2",
    "tables12",
    "fig3",
    "fig4",
    "fig5",
    "fig6",
    "fig7",
    "table3",
    "truth",
)


class ReportParser(HTMLParser):
    """Sections (id → their text, images and tables), metric spans and image sources."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.metrics: list[dict] = []
        self.images: list[str] = []
        self.scripts = 0
        self.links: list[str] = []
        self._section: str | None = None
        self._metric: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = {"text": "", "img": 0, "table": 0, "note": ""}
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
            if self._section:
                self.sections[self._section]["img"] += 1
        elif tag == "table" and self._section:
            self.sections[self._section]["table"] += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "link":
            self.links.append(attrs.get("href", ""))
        elif tag == "span" and attrs.get("class") == "metric" and "data-key" in attrs:
            self._metric = {"key": attrs["data-key"], "value": attrs["data-value"], "text": ""}

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "span" and self._metric is not None:
            self.metrics.append(self._metric)
            self._metric = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section]["text"] += data
        if self._metric is not None:
            self._metric["text"] += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_the_report_is_written_beside_the_run_and_self_contained(train_dir, report_html):
    assert report_html == train_dir / "report" / "index.html"
    page = parse(report_html)
    assert page.scripts == 0 and page.links == []
    assert len(page.images) >= 9  # one per figure
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_every_section_has_content_on_a_complete_run(report_html):
    page = parse(report_html)
    assert list(page.sections) == list(SECTIONS)
    for name, section in page.sections.items():
        assert "not run:" not in section["text"], (name, section["text"])
        assert "figure failed" not in section["text"], (name, section["text"])
        if name not in {"headline", "configuration", "table3"}:
            assert section["img"] >= 1, name
    assert page.sections["configuration"]["text"].count("folds") >= 1
    assert page.sections["tables12"]["table"] >= 2
    assert page.sections["table3"]["table"] >= 2


def test_headline_numbers_are_those_of_metrics_json(train_dir, report_html):
    metrics = json.loads((train_dir / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    page = parse(report_html)
    shown = {m["key"]: m for m in page.metrics}
    required = ["cv.fusion.macro_r", "cv.fusion.macro_r_fold_sd"]
    required += [f"cv.fusion.r.{t}" for t in ("ers_caf", "lr", "heterogeneity")]
    required += [
        f"survival.{e}.c_index.{m}" for e in ("os", "pfs") for m in ("clinical", "clinical_ai")
    ]
    required += [f"external.EXT.r.{t}" for t in ("ers_caf", "lr", "heterogeneity")]
    required += ["site_entropy.before", "site_entropy.after", "lso.A.before", "lso.A.after"]
    assert set(required) <= set(shown)
    for key, m in shown.items():
        assert float(m["value"]) == pytest.approx(metrics[key], abs=1e-12), key
        digits = len(m["text"].split(".")[1])
        assert float(m["text"]) == pytest.approx(metrics[key], abs=0.5 * 10**-digits + 1e-9), key
    # the C-index gain is the difference of the two numbers shown
    gain = metrics["survival.os.c_index.clinical_ai"] - metrics["survival.os.c_index.clinical"]
    assert f"{gain:+.3f}" in page.sections["headline"]["text"]


def test_table_1_shows_the_evaluation_numbers(train_dir, report_html):
    import pandas as pd

    fidelity = pd.read_csv(train_dir / "evaluation" / "fidelity.csv")
    row = fidelity[(fidelity["model"] == "fusion") & (fidelity["target"] == "lr")].iloc[0]
    text = report_html.read_text(encoding="utf-8")
    assert f"{row['r']:.2f} [{row['r_ci_low']:.2f}, {row['r_ci_high']:.2f}]" in text


def test_the_demo_configuration_is_noted(report_html):
    assert "Demo configuration." in report_html.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "config, study, expected",
    [
        ({"demo": True}, None, "lighter demo configuration"),
        ({"cohort": {}}, {"config": "configs/demo.yaml"}, "demo.yaml"),
        ({"cohort": {}}, {"note": "Demo run with lighter settings"}, "Demo run"),
        ({"notes": "Demo configuration (configs/demo.yaml), lighter"}, None, "configs/demo"),
        ({"notes": "A real study"}, {"config": "/x/configs/study.yaml"}, None),
        ({"cohort": {}}, {"stages": {}}, None),
    ],
)
def test_demo_note(tmp_path, config, study, expected):
    note = RunFiles(tmp_path, config=config, study_manifest=study).demo_note()
    assert note == expected if expected is None else expected in note


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``stromalens ARGS`` in this process through the real entry point."""
    from stromalens.cli import main

    monkeypatch.setattr(sys, "argv", ["stromalens", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_inputs_become_not_run_notes_and_the_cli_writes_out(
    tmp_path, train_dir, monkeypatch, capsys
):
    run = tmp_path / "train"
    run.mkdir()
    (run / "evaluation").mkdir()
    shutil.copy(train_dir / "evaluation" / "metrics.json", run / "evaluation")
    config = yaml.safe_load((train_dir / "config.yaml").read_text(encoding="utf-8"))
    config["training"]["targets"] = str(tmp_path / "absent" / "targets.parquet")
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "elsewhere" / "report.html"
    code, stdout, stderr = _cli(monkeypatch, capsys, "report", str(run), "--out", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    page = parse(out)
    assert list(page.sections) == list(SECTIONS)
    texts = {k: v["text"] for k, v in page.sections.items()}
    assert f"not run: {tmp_path / 'absent' / 'targets.parquet'} missing" in texts["fig1"]
    assert "not run: evaluation/fidelity.csv missing" in texts["tables12"]
    assert "not run: evaluation/survival_hr.csv missing" in texts["fig3"]
    assert "not run: evaluation/external.csv missing" in texts["fig7"]
    assert "not run: predictions.parquet missing" in texts["truth"]
    for name in SECTIONS[2:]:
        assert "not run:" in texts[name], name
    # the headline still shows the numbers of metrics.json
    assert any(m["key"] == "cv.fusion.macro_r" for m in page.metrics)


def test_a_missing_run_directory_is_one_clear_error(tmp_path, monkeypatch, capsys):
    code, _, stderr = _cli(monkeypatch, capsys, "report", str(tmp_path / "nope"))
    assert code == 1
    assert "training run directory not found" in stderr
    assert "Traceback" not in stderr


def test_pearson_matches_scipy():
    import numpy as np

    from stromalens.report.figures import pearson

    x = [0.3, -1.2, 0.8, 1.5, -0.4, 0.1, 2.2, -0.9, 0.6, -1.7, 5.0]
    y = [0.1, -0.8, 1.1, 0.9, 0.3, -0.2, 1.8, -1.1, -0.3, -1.0, np.nan]
    r, p, n = pearson(x, y)
    # scipy.stats.pearsonr(x[:10], y[:10]):
    #   statistic 0.8996410962361006, pvalue 3.925687878566953e-4
    assert n == 10
    assert r == pytest.approx(0.8996410962361006, abs=1e-12)
    assert p == pytest.approx(3.925687878566953e-4, rel=1e-9)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3])[0])


def test_the_title_is_the_studys_name_and_its_notes_are_shown(tmp_path, train_dir):
    from stromalens.report import write_report

    run = tmp_path / "train"
    shutil.copytree(train_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config.update(name="Chordoma ERS-CAF study", notes="Site E joined in 2025.")
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    html = write_report(run).read_text(encoding="utf-8")
    assert "<title>stromalens report — Chordoma ERS-CAF study</title>" in html
    assert "Site E joined in 2025." in html


def test_the_prompt_section_shows_the_difference_to_cur_over_the_folds(report_html):
    # conftest: ANTI − CUR = 0.2 − 0.7 = −0.50 on ers_caf, interval ± 0.1
    text = report_html.read_text(encoding="utf-8")
    assert "Difference to CUR, mean over folds" in text
    assert "-0.50 [-0.60, -0.40]" in text
