"""The leaderboard's picture: what it draws, that a contributor's text cannot script it, that it
lives as one run the board's rows never include, and (slow) what an analyst sees of the published
board and its picture in a real headless Chromium, on a real MLflow server with TLS and
basic-auth. Screenshots go to ``$COHORTFL_TEST_ARTIFACTS`` (default: ``test-artifacts/``)."""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from test_leaderboard import _row

from contract.values import PairedDifference
from server.board_picture import PICTURE_FILE, PICTURE_TAG, log_picture, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("COHORTFL_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


def test_the_picture_draws_each_submission_from_out_of_the_box_to_fine_tuned_with_the_noise_flag():
    rows = [_row("ada", 0.85), _row("bob", 0.83, {"ada": PairedDifference(-0.02, -0.06, 0.02)}),
            _row("cy", 0.60, {"bob": PairedDifference(-0.23, -0.30, -0.16)})]
    page = render(rows)
    chart = page[page.index("<svg"):page.index("</svg>")]
    assert chart.count('fill="#1f4e99"') == 3  # fine-tuned
    assert chart.count('fill="white"') == 3  # out of the box
    assert chart.count('marker-end="url(#arrow)"') == 3
    assert chart.count("noise</text>") == 1  # ada vs bob; bob vs cy is a real difference
    table = page[page.index("<table"):]
    assert table.count("<tr>") == 4 and "0.850 [0.78, 0.92]" in table and "+0.550" in table
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_a_contributors_text_is_shown_never_run():
    hostile = replace(_row("r1", 0.8), contributor='<img src=x onerror="alert(1)">',
                      strategy="</text><script>fetch('/x')</script>")
    page = render([hostile])
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_missing_scores_are_drawn_as_missing_not_as_zero():
    row = replace(_row("r1", 0.8), out_of_the_box=math.nan, out_of_the_box_ci95=(math.nan, math.nan))
    page = render([row])
    assert 'fill="white"' not in page and 'marker-end' not in page  # no point, no arrow
    assert "<td>-</td>" in page


def test_the_picture_is_one_run_that_the_boards_rows_never_include(tmp_path):
    from mlflow.tracking import MlflowClient

    from contract.names import Tag
    from server.leaderboard import read_leaderboard, read_unfinished

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("board")
    run = client.create_run(experiment, tags={Tag.CONTRIBUTOR: "ada"})
    client.log_metric(run.info.run_id, "holdout_fine_tuned_macro_f1", 0.8)
    client.set_terminated(run.info.run_id, "FINISHED")
    first = log_picture(client, experiment, read_leaderboard(uri, "board"), "board")
    second = log_picture(client, experiment, read_leaderboard(uri, "board"), "board")
    pictures = client.search_runs([experiment], f"tags.`{PICTURE_TAG}` = 'true'")
    assert [p.info.run_id for p in pictures] == [second] and first != second  # the old one deleted
    assert [r.run_id for r in read_leaderboard(uri, "board")] == [run.info.run_id]
    assert read_unfinished(uri, "board") == []
    page = Path(client.download_artifacts(second, PICTURE_FILE, str(tmp_path))).read_text()
    assert "ada" in page and "0.800" in page


# --- what an analyst sees, in a real browser -------------------------------------------------

def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_an_analyst_sees_the_published_board_and_its_picture_in_the_mlflow_ui(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright
    from test_embargo import PASSWORDS, as_user, official_runs, start_server

    from contract.names import LEADERBOARD_METRIC, Tag
    from server.deployment import stop_process
    from server.embargo import PUBLISHED, Board
    from server.leaderboard import board_link, picture_link

    server, process = start_server(tmp_path, "NO_PERMISSIONS")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        official_runs(monkeypatch, server)
        Board(server.uri, "cohortfl").publish()
        alice = as_user(monkeypatch, server, "alice", PASSWORDS["alice"])
        published = alice.get_experiment_by_name(f"cohortfl/{PUBLISHED}").experiment_id
        runs = MlflowClient(server.uri).search_runs([published])
        names = {r.data.tags[Tag.CONTRIBUTOR]: r.info.run_name
                 for r in runs if PICTURE_TAG not in r.data.tags}
        [picture] = [r.info.run_id for r in runs if PICTURE_TAG in r.data.tags]
        with sync_playwright() as playwright:
            browser = _browser(playwright)
            page = browser.new_context(http_credentials={"username": "alice", "password": PASSWORDS["alice"]},
                                       ignore_https_errors=True, viewport={"width": 1800, "height": 700}
                                       ).new_page()
            try:
                _open(page, board_link(server.uri, published),
                      [*names.values(), "The published board", "matching runs"])
                # the board's view: its key numbers as columns, best first (the picture run last)
                _shows(page, [LEADERBOARD_METRIC, "holdout_gain_macro_f1", "cohortfl.contributor"])
                body = page.inner_text("body")
                assert "Error loading shared view state" not in body
                table = body[body.index("Run Name"):]  # the runs table, below the description
                order = [table.index(name) for name in (names["alice"], names["bob"], "leaderboard-picture")]
                assert order == sorted(order)
                page.screenshot(path=str(ARTIFACTS / "published-board-runs.png"))

                _open(page, picture_link(server.uri, published, picture), [PICTURE_FILE])
                page.get_by_text(PICTURE_FILE).first.click(timeout=90_000)
                frame = _frame_with(page, "cohortfl leaderboard (published)")
                assert frame.locator("svg circle").count() == 4  # two runs, before and after
                text = frame.locator("table").inner_text()
                assert "alice" in text and "bob" in text and "0.800 [0.73, 0.87]" in text
                page.screenshot(path=str(ARTIFACTS / "published-board-picture.png"))
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / "published-board-failed.png"))
                raise
            finally:
                browser.close()
    finally:
        stop_process(process)


def _open(page, url: str, texts: list[str], loads: int = 3, timeout: float = 60.0) -> None:
    """Open ``url`` and wait until it shows ``texts``, loading it again (as a person would) when
    MLflow's UI fails to load: once in CI one of its chunks never reached the server and the UI showed
    its error page ("Something went wrong"; a chunk aborted on purpose shows the same). Each reload
    is printed with what the browser reported, and the last failure says what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    problems: list[str] = []
    listeners = {"requestfailed": lambda r: problems.append(f"request failed: {r.url} ({r.failure})"),
                 "pageerror": lambda e: problems.append(f"page error: {e}"),
                 "console": lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None}
    for event, listener in listeners.items():
        page.on(event, listener)
    try:
        for load in range(1, loads + 1):
            page.goto(url) if load == 1 else page.reload()  # a new hash alone would not reload
            try:
                _shows(page, texts, timeout)
                return
            except PlaywrightTimeout:
                shown = page.inner_text("body")[:600].replace("\n", " | ")
                print(f"load {load} of {url} did not show {texts} in {timeout:.0f} s; it showed: {shown!r}; "
                      f"the browser reported: {problems[-8:]}")
                problems.clear()
    finally:
        for event, listener in listeners.items():
            page.remove_listener(event, listener)
    raise AssertionError(f"MLflow's UI did not show {texts} in {loads} loads of {url}; see the output above")


def _shows(page, texts: list[str], timeout: float = 90.0) -> None:
    """Wait until the page's text holds every one of ``texts`` (MLflow's UI renders late)."""
    page.wait_for_function("texts => texts.every(t => document.body.innerText.includes(t))", arg=texts,
                           timeout=timeout * 1000)


def _frame_with(page, text: str, timeout: float = 60.0):
    """The page's frame (MLflow shows an HTML artifact in an iframe) whose body holds ``text``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if re.search(re.escape(text), frame.content()):
                    if frame.locator("svg").count():
                        return frame
            except Exception:  # a frame navigating away: look again
                continue
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame shows {text!r}; frames: {[f.url for f in page.frames]}")
