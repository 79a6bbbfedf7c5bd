"""Who reads which results on the workspace's MLflow: each contributor their own, everyone the
published board, the foundation everything. Enforced by MLflow's basic-auth app
(``server/tracking_server.py``), whose grants are per experiment, so the layout is:

====================================  ==================================  =====================
experiment                            holds                               who reads / writes
====================================  ==================================  =====================
``<base>/<contributor>``              that contributor's official runs    the contributor reads;
                                                                          the node writes
``<base>/foundation``                 each run's paired comparisons       the foundation only;
                                      (they name and score other runs)    the node writes
``<base>/published``                  copies of the runs the foundation   every enrolled
                                      published (``cohortfl publish``)    contributor reads
====================================  ==================================  =====================

A contributor's MLflow account is their user name with their intake token as password, made
(or updated) when they submit: the intake holds the token in clear only then.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contract.names import PAIRED_TAG_PREFIX, Tag
from server.board_picture import PICTURE_FILE, PICTURE_RUN_NAME, log_picture
from server.leaderboard import BOARD_DESCRIPTION, describe_experiment, every_run, read_leaderboard

log = logging.getLogger("cohortfl.embargo")

#: Names no contributor may have: MLflow accounts of the workspace and its own experiments
#: (a contributor called ``node`` would otherwise be enrolled over the node's account).
RESERVED = frozenset({"admin", "node", "foundation", "published"})
READERS = "contributors"  # the role that reads the published board
WORKSPACE = "default"  # MLflow's own workspace, where roles live (MLflow 3.17)
FOUNDATION, PUBLISHED = "foundation", "published"
#: What each experiment is, above the board's reading guide.
DESCRIPTIONS = {
    FOUNDATION: "**Foundation only.** Each run holds one submission's paired comparisons with earlier "
                "runs (tags `cohortfl.paired.<run id>`: macro-F1 difference and its interval).\n\n",
    PUBLISHED: "**The published board**: the runs the foundation published (`cohortfl publish`), readable "
               "by every contributor. The tag `cohortfl.published_from` names the official run. The run "
               f"`{PICTURE_RUN_NAME}` holds the board's picture: `{PICTURE_FILE}` under its Artifacts.\n\n",
    None: "**Your own runs**, readable by you and the foundation until the foundation publishes them.\n\n",
}
#: A published copy names the run it copies (in the contributor's own experiment).
PUBLISHED_FROM = "cohortfl.published_from"
#: A comparisons run names the official run whose comparisons it holds.
COMPARES = "cohortfl.official_run"


@dataclass(frozen=True)
class Board:
    """The experiments of one workspace's MLflow server and their grants (acting as its admin)."""

    tracking_uri: str
    base: str
    node_user: str = "node"

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _auth(self):
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=self.tracking_uri)

    def experiment(self, name: str) -> str:
        """The id of ``<base>/<name>``, created on first use (by the admin: no contributor can
        create it first and own it)."""
        client = self._client()
        full = f"{self.base}/{name}"
        found = client.get_experiment_by_name(full)
        if found:
            return found.experiment_id
        experiment = client.create_experiment(full)
        describe_experiment(client, experiment,
                            DESCRIPTIONS.get(name, DESCRIPTIONS[None]) + BOARD_DESCRIPTION)
        return experiment

    def set_up(self) -> None:
        """The foundation's and the published experiments, the node's grant, the readers' role."""
        auth = self._auth()
        _grant(auth, self.node_user, self.experiment(FOUNDATION), "EDIT")
        published = self.experiment(PUBLISHED)
        if READERS not in {role.name for role in auth.list_roles(WORKSPACE)}:
            role = auth.create_role(WORKSPACE, READERS, "reads the published board")
            auth.add_role_permission(role.id, "experiment", published, "READ")

    def enrol(self, contributor: str, password: str) -> str:
        """The contributor's account (password: their token) and experiment; its id. The node
        may write there, the contributor read, and the contributor reads the published board."""
        from mlflow.exceptions import MlflowException

        if contributor in RESERVED or contributor == self.node_user:
            raise ValueError(f"'{contributor}' is reserved: it names the workspace's own account "
                             "or experiment")
        auth = self._auth()
        try:
            auth.get_user(contributor)
            auth.update_user_password(contributor, password)
        except MlflowException:
            auth.create_user(contributor, password)
        experiment = self.experiment(contributor)
        _grant(auth, contributor, experiment, "READ")
        _grant(auth, self.node_user, experiment, "EDIT")
        role = next(r for r in auth.list_roles(WORKSPACE) if r.name == READERS)
        if role.id not in {r.id for r in auth.list_user_roles(contributor)}:
            auth.assign_role(contributor, role.id)
        return experiment

    def open_comparisons(self, official_run_id: str, contributor: str) -> str:
        """A run in the foundation's experiment for the node's paired comparisons of one run."""
        run = self._client().create_run(self.experiment(FOUNDATION), run_name=f"{contributor}-comparisons",
                                        tags={COMPARES: official_run_id, Tag.CONTRIBUTOR: contributor})
        return run.info.run_id

    def publish(self, contributor: str | None = None, run_id: str | None = None) -> list[str]:
        """Copy finished official runs (one, a contributor's, or all) to the published board:
        params, metrics, tags and artifacts, never a paired comparison. A run already published
        is skipped; the board's picture is drawn anew. Returns the ids of the new copies."""
        client = self._client()
        published = self.experiment(PUBLISHED)
        done = {run.data.tags.get(PUBLISHED_FROM) for run in every_run(client, [published])}
        own = {e.experiment_id for e in client.search_experiments(max_results=50000)
               if e.name.startswith(f"{self.base}/")
               and e.name.removeprefix(f"{self.base}/") not in (FOUNDATION, PUBLISHED)}
        if run_id:
            sources = [client.get_run(run_id)]
            if sources[0].info.experiment_id not in own:
                raise ValueError(f"run {run_id} is not an official run of a contributor of this workspace")
        else:
            experiments = [self.experiment(contributor)] if contributor else sorted(own)
            sources = every_run(client, experiments, "attributes.status = 'FINISHED'")
        copies = [self._copy(client, source, published) for source in sources
                  if source.info.run_id not in done and source.info.status == "FINISHED"]
        log_picture(client, published, read_leaderboard(self.tracking_uri, f"{self.base}/{PUBLISHED}"),
                    "cohortfl leaderboard (published)")
        return copies

    def _copy(self, client, source, experiment: str) -> str:
        from mlflow.entities import Metric, Param

        tags = {k: v for k, v in source.data.tags.items()
                if not k.startswith(PAIRED_TAG_PREFIX) and k != "mlflow.runName"}
        copy = client.create_run(experiment, run_name=source.info.run_name,
                                 tags={**tags, PUBLISHED_FROM: source.info.run_id})
        run_id = copy.info.run_id
        metrics = [Metric(key, value, source.info.start_time, 0)
                   for key, value in source.data.metrics.items()]
        params = [Param(k, v) for k, v in source.data.params.items()]
        for start in range(0, max(len(metrics), len(params)), 100):
            client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
        with tempfile.TemporaryDirectory(prefix="cohortfl-publish-") as folder:
            for item in client.list_artifacts(source.info.run_id):
                if not item.is_dir:
                    client.log_artifact(run_id, client.download_artifacts(source.info.run_id, item.path,
                                                                          folder))
        client.set_terminated(run_id, "FINISHED")
        log.info("published %s as %s", source.info.run_id, run_id)
        return run_id


def _grant(auth, user: str, experiment: str, permission: str) -> None:
    """Grant ``user`` one permission on one experiment, replacing what it had."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(user, "experiment", experiment, permission)
    except MlflowException as ex:
        if "RESOURCE_ALREADY_EXISTS" not in str(ex):
            raise
        auth.revoke_user_permission(user, "experiment", experiment)
        auth.grant_user_permission(user, "experiment", experiment, permission)



def publish_from(workspace_dir: Path, contributor: str | None = None, run_id: str | None = None) -> list[str]:
    """``cohortfl publish``: as the workspace's admin, on its running MLflow server."""
    import json

    from server.deployment import Layout
    from server.tracking_server import use_admin_files

    layout = Layout(Path(workspace_dir).resolve())
    if not layout.tracking_file.is_file():
        raise ValueError(f"{layout.root} has no running workspace's MLflow (start `cohortfl workspace`)")
    tracking = json.loads(layout.tracking_file.read_text(encoding="utf-8"))
    use_admin_files(layout.secrets, layout.ca)
    return Board(tracking["uri"], tracking["base"]).publish(contributor, run_id)
