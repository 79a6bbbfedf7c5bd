"""The node's ledger: submission limits, compute budgets, the export ledger."""

import multiprocessing

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from client.errors import PolicyViolation
from client.ledger import NodeLedger


@pytest.fixture
def ledger(tmp_path) -> NodeLedger:
    return NodeLedger(tmp_path / "ledger.sqlite")


def test_a_sixth_submission_is_refused_saying_what_is_used(ledger):
    for i in range(5):
        assert ledger.open_submission("ada", f"run-{i}", limit=5).submissions == i + 1
    with pytest.raises(PolicyViolation, match=r"'submission-limit'.*5 of 5 submissions used"):
        ledger.open_submission("ada", "run-5", limit=5)
    assert ledger.usage("ada").submissions == 5
    assert ledger.open_submission("bob", "run-b", limit=5).submissions == 1  # per contributor


def test_a_run_gets_its_out_of_the_box_moment_once(ledger):
    ledger.open_submission("ada", "run-1", limit=5)
    with pytest.raises(PolicyViolation, match="'submission-phases'"):
        ledger.open_submission("ada", "run-1", limit=5)
    assert ledger.usage("ada").submissions == 1


def test_each_round_number_trains_once_and_rounds_are_bounded(ledger):
    ledger.open_submission("ada", "run-1", limit=5)
    ledger.begin_round("ada", "run-1", 1, max_rounds=2, expected_flops=0, budget_flops=10)
    with pytest.raises(PolicyViolation, match="'round-once'"):
        ledger.begin_round("ada", "run-1", 1, max_rounds=2, expected_flops=0, budget_flops=10)
    ledger.begin_round("ada", "run-1", 7, max_rounds=2, expected_flops=0, budget_flops=10)
    with pytest.raises(PolicyViolation, match="'rounds-range'"):
        ledger.begin_round("ada", "run-1", 8, max_rounds=2, expected_flops=0, budget_flops=10)


def test_phases_survive_a_new_ledger_object_as_a_restarted_node(ledger):
    ledger.open_submission("ada", "run-1", limit=5)
    ledger.begin_round("ada", "run-1", 1, max_rounds=2, expected_flops=0, budget_flops=10)
    ledger.advance("run-1", ("training",), "closed", "final holdout")
    again = NodeLedger(ledger.path)
    assert again.phase("run-1") == "closed"
    with pytest.raises(PolicyViolation, match="'submission-phases'"):
        again.begin_round("ada", "run-1", 2, max_rounds=2, expected_flops=0, budget_flops=10)


def _open_after_barrier(path, run_id, barrier, results):
    barrier.wait()
    try:
        NodeLedger(path).open_submission("ada", run_id, limit=5)
        results.put("opened")
    except PolicyViolation:
        results.put("refused")
    except Exception as ex:  # reported, so the test shows it instead of timing out
        results.put(f"{type(ex).__name__}: {ex}")


def test_concurrent_submissions_do_not_exceed_the_limit(tmp_path):
    """Eight processes open eight runs at the same moment: exactly five get through."""
    path = tmp_path / "ledger.sqlite"
    NodeLedger(path)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(8), context.Queue()
    workers = [context.Process(target=_open_after_barrier, args=(path, f"run-{i}", barrier, results))
               for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["opened"] * 5 + ["refused"] * 3
    assert NodeLedger(path).usage("ada").submissions == 5


def _round(ledger, who, run, number, flops, seconds=1.0, expected=0, budget=10**18):
    if ledger.phase(run) == "new":
        ledger.open_submission(who, run, limit=5)
    ledger.begin_round(who, run, number, max_rounds=9, expected_flops=expected, budget_flops=budget)
    ledger.finish_round(run, number, 0.5, flops, seconds)


def test_work_that_would_go_over_budget_is_refused_before_it_starts(ledger):
    pf = 10**15
    _round(ledger, "ada", "run-1", 1, flops=60 * pf)
    _round(ledger, "ada", "run-1", 2, flops=0, expected=40 * pf, budget=100 * pf)
    with pytest.raises(PolicyViolation, match=r"'compute-budget'.*40 PF of 100 PF left"):
        _round(ledger, "ada", "run-1", 3, flops=0, expected=41 * pf, budget=100 * pf)
    assert [r[0] for r in ledger.rounds("run-1")] == [1, 2]  # the refused round left no trace
    _round(ledger, "bob", "run-2", 1, flops=0, expected=100 * pf, budget=100 * pf)


def test_charges_add_up_per_contributor(ledger):
    _round(ledger, "ada", "r1", 1, 10, 0.5)
    _round(ledger, "ada", "r2", 1, 5, 0.25)
    _round(ledger, "bob", "r3", 1, 7, 1.0)
    usage = ledger.usage("ada")
    assert (usage.flops, usage.device_seconds) == (15, 0.75)


def test_the_export_ledger_records_keys_shapes_and_bytes(ledger):
    reply = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(3, 4)}),
                        "metrics": MetricRecord({"train-loss": 0.5, "num-examples": 512})})
    ledger.record_export("ada", "run-1", "train", reply)
    ledger.record_export("bob", "run-2", "query.holdout_out_of_the_box", None, "refused by rule 'x': y")
    [ada] = ledger.exports("ada")
    assert ada.keys == ["arrays/w", "metrics/train-loss", "metrics/num-examples"]
    assert ada.shapes == {"arrays/w": [3, 4]} and ada.bytes >= 3 * 4 * 4
    [bob] = ledger.exports("bob")
    assert bob.keys == ["error"] and bob.bytes == len("refused by rule 'x': y")
    assert len(ledger.exports()) == 2


# --- the node applies the ledger -------------------------------------------------------

LINEAR_ROUND_FLOPS = 4 * 512 * 255 * 3


@pytest.fixture
def tight_node(tmp_path, cohort_parquet):
    """A node whose policy allows one submission and 1.5 rounds of the linear model."""
    from mlflow.tracking import MlflowClient

    from client.node import Node
    from client.policy import NodePolicy
    from client.settings import NodeSettings

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    policy = NodePolicy(compute_budget_pf=1.5 * LINEAR_ROUND_FLOPS / 1e15, submissions_max=1,
                        dp_enabled=False)  # DP rounds are charged after they ran
    node = Node(NodeSettings(data_path=str(cohort_parquet), tracking_uri=uri, device="cpu",
                             state_dir=str(tmp_path / "state"), policy=policy))
    return node, lambda: client.create_run(experiment).info.run_id


def _facts(run_id):
    from runs import node_run

    from models import ModelSpec

    return node_run(contributor="ada", submission_id=run_id, model=ModelSpec("linear"), seed=0,
                    num_rounds=5)


def _arrays(node, facts):
    return ArrayRecord({k: v.detach().cpu() for k, v in node.build(facts)[0].state_dict().items()})


def test_the_node_refuses_a_round_that_would_go_over_budget(tight_node):
    from flwr.app import ConfigRecord

    node, new_run = tight_node
    facts = _facts(new_run())
    node.score_out_of_the_box(RecordDict({"arrays": _arrays(node, facts)}), facts)

    def train(server_round):
        config = ConfigRecord({"lr": 0.1, "local-epochs": 1, "batch-size": 32, "server-round": server_round})
        return node.train(RecordDict({"arrays": _arrays(node, facts), "config": config}), facts)

    train(1)
    with pytest.raises(PolicyViolation, match="'compute-budget'"):
        train(2)
    assert node.ledger.usage("ada").flops == LINEAR_ROUND_FLOPS  # the refused round cost nothing


def test_the_node_refuses_a_submission_over_the_limit_before_scoring(tight_node):
    from mlflow.tracking import MlflowClient

    node, new_run = tight_node
    first, second = _facts(new_run()), _facts(new_run())
    node.score_out_of_the_box(RecordDict({"arrays": _arrays(node, first)}), first)
    with pytest.raises(PolicyViolation, match="'submission-limit'.*1 of 1"):
        node.score_out_of_the_box(RecordDict({"arrays": _arrays(node, second)}), second)
    metrics = MlflowClient(node.settings.tracking_uri).get_run(second.submission_id).data.metrics
    assert "holdout_out_of_the_box_macro_f1" not in metrics


def test_a_contributor_whose_device_seconds_are_used_is_refused_before_the_round(ledger):
    """A model cheap in FLOPs but slow in practice (thousands of thin layers) is charged in device
    seconds too, and stopped when the contributor's device time is used."""
    ledger.open_submission("ada", "run-1", 5)
    ledger.begin_round("ada", "run-1", 1, 5, 0, 10**18, budget_device_seconds=10.0)
    ledger.finish_round("run-1", 1, 0.5, 1_000, 10.5)
    with pytest.raises(PolicyViolation, match="'device-time-budget'"):
        ledger.begin_round("ada", "run-1", 2, 5, 0, 10**18, budget_device_seconds=10.0)
    ledger.open_submission("bob", "run-2", 5)
    ledger.begin_round("bob", "run-2", 1, 5, 0, 10**18, budget_device_seconds=10.0)  # bob's own time


def test_charges_list_each_submission_with_the_rounds_that_ran(ledger):
    ledger.open_submission("ada", "run-1", limit=5)
    for server_round in (1, 2):
        ledger.begin_round("ada", "run-1", server_round, max_rounds=3, expected_flops=0, budget_flops=10**12)
        ledger.finish_round("run-1", server_round, None, flops=1000, device_seconds=0.5)
    ledger.open_submission("bob", "run-2", limit=5)
    [ada, bob] = ledger.charges()
    assert (ada.run_id, ada.rounds, ada.flops, ada.device_seconds) == ("run-1", 2, 2000, 1.0)
    assert (bob.rounds, bob.flops, bob.phase) == (0, 0, "scored-out-of-the-box")
    assert ledger.charges("bob") == [bob]
