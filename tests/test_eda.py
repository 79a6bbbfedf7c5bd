"""The cohort's EDA: computed on the training split, every published count under k suppressed, and
a suppressed count that a published total would give back suppressed with a second cell. The
attacker reads the published report and subtracts; the control without the second suppression
shows what they would win."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from client.eda import cohort_eda, suppressed_counts, to_html
from contract.schema import SCHEMA


def _cohort(n_fast: int = 4, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A training split with a rare class: 60 Slow, 40 Medium, ``n_fast`` Fast."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], [60, 40, n_fast])
    frame = pd.DataFrame(rng.normal(size=(len(labels), len(SCHEMA.numeric))), columns=list(SCHEMA.numeric))
    frame["sex"] = rng.choice(["female", "male"], len(labels))
    frame["onset"] = rng.choice(["childhood", "juvenile", "adult"], len(labels), p=[0.05, 0.45, 0.5])
    return frame, labels


def _table(report, title: str):
    return next(t for t in report.tables if t.title.startswith(title))


def _recover(shown: list[str], total: int) -> int | None:
    """The attacker: with one hidden cell and a published total, the hidden count is the rest."""
    hidden = [i for i, c in enumerate(shown) if c.startswith("<")]
    return total - sum(int(c) for c in shown if not c.startswith("<")) if len(hidden) == 1 else None


def test_a_rare_class_is_suppressed_and_cannot_be_recovered_from_the_published_total():
    frame, labels = _cohort(n_fast=4)
    report = cohort_eda(frame, labels, SCHEMA, k=10)
    balance = _table(report, "Class balance")
    shown = [row[1] for row in balance.rows]
    assert shown[2] == "<10"  # Fast, 4 records
    assert _recover(shown, report.n_records) is None  # Medium went with it
    assert shown == ["60", "<10", "<10"]
    # the control: the same counts without the second suppression give the attacker the count
    naive = suppressed_counts([60, 40, 4], 10, total_published=False)
    assert _recover(naive, report.n_records) == 4


def test_categorical_counts_are_suppressed_down_each_class_so_no_level_comes_back():
    frame, labels = _cohort(n_fast=30)
    report = cohort_eda(frame, labels, SCHEMA, k=10)
    rows = [r for r in _table(report, "Categorical levels by class").rows if r[0] == "onset"]
    sizes = np.bincount(labels)
    for j in range(3):  # each class's column adds up to its published size
        column = [row[2 + j] for row in rows]
        assert _recover(column, int(sizes[j])) is None
        assert any(c.startswith("<") for c in column)  # childhood is rare in every class


def test_statistics_of_a_small_class_are_withheld_and_the_foundations_version_shows_all():
    frame, labels = _cohort(n_fast=4)
    frame.loc[:5, "clinical_0"] = np.nan
    schema = SCHEMA.__class__(**{**SCHEMA.__dict__, "may_be_missing": ("clinical_0",)})
    published = cohort_eda(frame, labels, schema, k=10)
    groups = _table(published, "Numeric groups by class")
    assert all(row[-1] == "-" for row in groups.rows) and all(row[2] != "-" for row in groups.rows)
    assert _table(published, "Missing cells by class").rows == [("clinical_0", "<10", "<10", "<10")]
    correlation = _table(published, "Correlation structure")
    assert {row[0] for row in correlation.rows} == {"gene", "clinical", "signature"}
    own = cohort_eda(frame, labels, schema, k=1)
    assert _table(own, "Missing cells by class").rows == [("clinical_0", "6", "0", "0")]
    assert "<" not in "".join("".join(r) for t in own.tables for r in t.rows)
    with pytest.raises(ValueError, match="k must be at least 1"):
        cohort_eda(frame, labels, schema, k=0)


def test_the_page_shows_names_and_never_runs_them():
    frame, labels = _cohort()
    schema = SCHEMA.__class__(**{**SCHEMA.__dict__, "classes": ("Slow", "<script>alert(1)</script>", "Fast")})
    page = to_html(cohort_eda(frame, labels, schema, k=10), "cohort <b>EDA</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>" not in page
    assert "http" not in page


@pytest.mark.slow
def test_the_published_eda_reads_in_a_browser_and_is_logged_as_one_run(tmp_path, cohort_parquet):
    """``cohortfl eda`` on the demo cohort: the page a contributor opens in a real headless Chromium
    shows every section with no cell under k, and the run it logs is not on the board."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient
    from test_board_picture import ARTIFACTS, CHROMIUM, _browser

    from contract.names import Tag
    from server.leaderboard import read_leaderboard

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    page_file = tmp_path / "eda.html"
    for _ in range(2):  # the second replaces the first run
        done = subprocess.run([sys.executable, "-m", "server.cli", "eda", "--cohort", str(cohort_parquet),
                               "--out", str(page_file), "--tracking-uri", uri, "--experiment", "board"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("board").experiment_id
    [eda] = client.search_runs([experiment], f"tags.`{Tag.COHORT_EDA}` = 'true'")
    assert [a.path for a in client.list_artifacts(eda.info.run_id, "figures")] == [
        "figures/figure_1.svg", "figures/figure_2.svg"]
    assert read_leaderboard(uri, "board") == []
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(page_file.as_uri())
            assert page.locator("table").count() == 6
            figures = page.locator("figure svg")
            assert figures.count() >= 2  # class balance and the numeric groups (the demo misses nothing)
            assert all(box["height"] > 50 for box in (figures.nth(i).bounding_box()
                                                       for i in range(figures.count())))
            headings = page.locator("h2").all_inner_texts()
            assert headings[0].startswith("Class balance") and headings[-1].startswith("Missing cells")
            cells = page.locator("td").all_inner_texts()
            assert len(cells) > 100 and all(not c.isdigit() or int(c) >= 10 for c in cells)
            page.screenshot(path=str(ARTIFACTS / "cohort-eda.png"), full_page=True)
        finally:
            browser.close()


def test_a_suppressed_class_size_comes_back_neither_from_its_share_nor_from_its_levels():
    """The attacker adds up a suppressed class's categorical levels (they partition the class) or
    multiplies its share by the published total; with both, the rare class is the rest."""
    frame, labels = _cohort(n_fast=4)
    report = cohort_eda(frame, labels, SCHEMA, k=10)
    balance = _table(report, "Class balance").rows
    assert [row[1] for row in balance] == ["60", "<10", "<10"]  # Medium (40) hides with Fast (4)

    def attacker(report) -> int | None:
        medium = None
        share = balance_rows(report)[1][2]
        if share != "-":
            medium = round(float(share) * report.n_records)
        sex = [r[3] for r in _table(report, "Categorical levels by class").rows if r[0] == "sex"]
        if all(c.isdigit() for c in sex):
            medium = sum(map(int, sex))
        return None if medium is None else report.n_records - 60 - medium

    def balance_rows(report):
        return _table(report, "Class balance").rows

    assert attacker(report) is None
    # the control: the foundation's own version (nothing suppressed) gives the rare class away
    assert attacker(cohort_eda(frame, labels, SCHEMA, k=1)) == 4


def test_figures_draw_only_what_their_tables_publish():
    """A bar's height is a count: a suppressed cell is an outlined box of one fixed height, so no
    ratio of heights gives the hidden count back."""
    import re

    from client.eda_figures import BAR_HEIGHT, figures

    frame, labels = _cohort(n_fast=4)
    svg = figures(cohort_eda(frame, labels, SCHEMA, k=10))
    balance = next(v for t, v in svg.items() if t.startswith("Class balance"))
    heights = [float(h) for h in re.findall(r"<rect [^>]*height='([\d.]+)'", balance)]
    assert len(heights) == 3 and heights[0] == BAR_HEIGHT  # Slow, 60: the full bar
    hidden = [h * 60 / BAR_HEIGHT for h in heights[1:]]
    assert all(round(h) not in (4, 40) for h in hidden)  # neither Fast's 4 nor Medium's 40
    assert balance.count("data-suppressed") == 2
    numeric = next(v for t, v in svg.items() if t.startswith("Numeric groups"))
    assert "Fast:" not in numeric  # a class under k: its statistics are withheld in the figure too


def test_a_groups_mean_standardised_value_is_the_same_computed_a_part_at_a_time():
    """20,000 records: the group score is computed over parts of its columns (a 20,000-gene group is
    never copied whole in float64) and equals the whole matrix's, missing cells left out."""
    from client.eda import _group_score

    rng = np.random.default_rng(0)
    values = rng.normal(size=(20_000, 300)) * 3 + 1
    values[rng.random(values.shape) < 0.1] = np.nan
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(300)])
    whole = np.nanmean((values - np.nanmean(values, axis=0)) / np.nanstd(values, axis=0), axis=1)
    np.testing.assert_allclose(_group_score(frame, list(frame.columns)), whole, rtol=1e-12, atol=1e-12)
