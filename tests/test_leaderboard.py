"""The leaderboard's text: paired comparisons of neighbours and the top feature group."""

from __future__ import annotations

from dataclasses import replace

from client.node import OFF_STATEMENT
from contract.values import PairedDifference
from server.leaderboard import Row, format_leaderboard


def _row(run_id: str, score: float, paired: dict | None = None) -> Row:
    return Row(contributor=run_id, strategy="FedAvg", model="mlp", out_of_the_box=0.3,
               out_of_the_box_ci95=(0.22, 0.38), fine_tuned=score,
               fine_tuned_ci95=(score - 0.07, score + 0.07), reported_recall=0.8,
               reported_recall_ci95=(0.7, 0.9),
               compute_pf=1e-7, budget_used_pf=1e-7, budget_pf=100, submissions_used=1,
               submissions_limit=5, exported_bytes=1000, epsilon=2.5,
               privacy="DP-SGD: noise multiplier 1", run_id=run_id, paired=paired or {},
               top_group="genes")


def test_neighbours_are_compared_from_whichever_run_holds_the_pair():
    first = _row("r1", 0.85)
    second = _row("r2", 0.80, {"r1": PairedDifference(-0.05, -0.09, -0.01)})  # written by the later run
    third = _row("r3", 0.79, {"r2": PairedDifference(-0.01, -0.06, 0.04)})
    assert first.versus(second) == PairedDifference(0.05, 0.01, 0.09)
    assert second.versus(first) == PairedDifference(-0.05, -0.09, -0.01)
    lines = format_leaderboard([first, second, third], width=250).splitlines()
    assert "+0.050 [+0.01, +0.09]" in lines[2] and "noise" not in lines[2]
    assert "+0.010 [-0.04, +0.06] noise" in lines[3]
    assert lines[4].split()[13] == "-"  # the last row has nobody below it
    assert "0.300 [0.22, 0.38]" in lines[2] and "0.800 [0.70, 0.90]" in lines[2]


def test_the_table_fits_the_terminal_leaving_out_the_least_needed_columns_and_naming_them():
    rows = [_row("r1", 0.85), _row("r2", 0.80, {"r1": PairedDifference(-0.05, -0.09, -0.01)})]
    wide = format_leaderboard(rows, width=250)
    assert "Left out" not in wide and "sent (kB)" in wide
    for width in (60, 100, 160):
        text = format_leaderboard(rows, width=width)
        assert max(len(line) for line in text.splitlines()) <= width
        header = text.splitlines()[0]
        assert "contributor" in header and "after fine-tuning" in header  # the most needed, always
        hidden = text.split(f"Left out at {width} columns: ")[1]
        assert "sent (kB)" in hidden and "sent (kB)" not in header
    assert "[low, high]" in wide  # the note's brackets are text, not markup


def test_the_board_says_plainly_when_the_node_trained_without_differential_privacy():
    private = _row("r1", 0.85)
    exposed = replace(_row("r2", 0.80), epsilon=float("nan"), privacy=OFF_STATEMENT)
    lines = format_leaderboard([private, exposed], width=250).splitlines()
    assert lines[2].endswith("2.50") and lines[3].endswith("DP OFF")


def test_runs_without_a_final_score_are_listed_under_the_board_with_their_reason(tmp_path):
    from mlflow.tracking import MlflowClient

    from contract.names import Tag
    from server.leaderboard import format_unfinished, read_leaderboard, read_unfinished

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("board")
    for who, status, why in (("ada", "FAILED", "only 0 of 3 rounds aggregated a reply"),
                             ("bob", "KILLED", "interrupted (Ctrl-C or SIGTERM) before the run ended")):
        run = client.create_run(experiment, tags={Tag.CONTRIBUTOR: who})
        client.log_param(run.info.run_id, "strategy", "FedAvg")
        client.set_tag(run.info.run_id, Tag.ERROR, why)
        client.set_terminated(run.info.run_id, status)
    assert read_leaderboard(uri, "board") == []
    shown = format_unfinished(read_unfinished(uri, "board"))
    assert "ada  FedAvg  FAILED" in shown and "only 0 of 3 rounds" in shown
    assert "bob  FedAvg  KILLED" in shown and "interrupted" in shown
