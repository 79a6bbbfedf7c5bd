"""The ``cohortfl`` command: demo, run, submit, leaderboard, exports, policy.

    cohortfl demo [HYDRA_OVERRIDE ...]       the pilot's submissions on a synthetic cohort
    cohortfl new DIR                         an example submission package to start from
    cohortfl run [HYDRA_OVERRIDE ...]        one submission (conf/config.yaml)
    cohortfl submit PACKAGE --contributor NAME [HYDRA_OVERRIDE ...]
                                             a contributor's package, simulated locally
    cohortfl submit PACKAGE --workspace URL --ca CA --token-file F
                                             a contributor's package, to the foundation
    cohortfl node --config node.yaml         the foundation's node (SuperNode + its ClientApp)
    cohortfl workspace --dir D               the foundation's workspace (SuperLink, sandbox,
                                             MLflow server, intake)
    cohortfl credential NAME --dir D         issue a contributor's token
    cohortfl publish --dir D --all           publish finished runs to every contributor
    cohortfl cohort init FILE                draft the cohort's data dictionary
    cohortfl cohort check FILE --dictionary D   check a cohort file against it
    cohortfl eda [--cohort FILE --dictionary D] [--out F] [--foundation]
                                             the cohort's EDA, small cells suppressed
    cohortfl schema [--dictionary D --cohort FILE] [--json]
                                             the published cohort schema contributors build for
    cohortfl rescore [--config node.yaml] [--run ID ...] [HYDRA_OVERRIDE ...]
                                             past runs' kept weights, scored on the cohort's new version
    cohortfl loopback --dir D                workspace + node on this machine, on loopback
    cohortfl leaderboard [--tracking-uri URI] [--experiment NAME]
    cohortfl exports [--contributor NAME]    the node's export ledger
    cohortfl policy [HYDRA_OVERRIDE ...]     the node's policy (conf/policy/pilot.yaml)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from contract.names import Moment

# Nothing leaves this machine: no Flower or Ray telemetry.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no schema-migration chatter
# a tracking server that went away costs one short try per call, not minutes of MLflow's retries
# (the node keeps what it could not write; the workspace says so)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a command as Ctrl-C does, so its runs' processes are stopped too."""
    raise KeyboardInterrupt


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cohortfl")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cohortfl`` console script."""
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="cohortfl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cohortfl {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("demo", "run the pilot's submissions on the embedded defaults"),
                       ("run", "run one submission")):
        command = commands.add_parser(name, help=text)
        command.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=fedprox")
        command.add_argument("-v", "--verbose", action="store_true", help="show Flower's logs")
    submit = commands.add_parser("submit", help="run a contributor's submission package")
    submit.add_argument("package", type=Path, help="folder with submission.yaml [strategy.py] "
                        "[initial.npz]")
    submit.add_argument("--contributor", help="who submits, on the local simulation engine")
    submit.add_argument("--workspace", help="the workspace's intake URL (https://host:port)")
    submit.add_argument("--ca", type=Path, help="the workspace's CA certificate")
    submit.add_argument("--token-file", type=Path, help="your credential, as the workspace issued it")
    submit.add_argument("overrides", nargs="*", help="Hydra overrides of the workspace, e.g. "
                        "workspace.num_rounds=10")
    submit.add_argument("-v", "--verbose", action="store_true", help="show Flower's logs")
    new = commands.add_parser("new", help="write an example submission package that runs")
    new.add_argument("folder", type=Path, help="a new (or empty) folder")
    own = commands.add_parser("pretrain", help="pretrain a package's model on your own cohort: writes "
                              "its initial.npz")
    own.add_argument("folder", type=Path, help="the submission package")
    own.add_argument("--cohort", type=Path, required=True,
                     help="your own cohort file (.csv or .parquet) in the node's published columns")
    own.add_argument("--schema", type=Path, default=None,
                     help="what it follows: the published schema (.json, `cohortfl schema --json`) "
                          "or a data dictionary (.yaml); default: the demo's shape")
    own.add_argument("--epochs", type=int, default=30)
    own.add_argument("--lr", type=float, default=None, help="default: the package's lr")
    synth = commands.add_parser("synthesize", help="a synthetic cohort in a published shape, to try a "
                                "package on before sending it")
    synth.add_argument("--schema", type=Path, default=None,
                       help="the published schema (.json, `cohortfl schema --json`); default: the "
                            "demo's shape")
    synth.add_argument("--out", type=Path, required=True, help="the cohort file to write (.parquet or .csv)")
    synth.add_argument("--records", type=int, default=640)
    synth.add_argument("--seed", type=int, default=0)
    board = commands.add_parser("leaderboard", help="print the leaderboard from an MLflow store")
    board.add_argument("--tracking-uri", default=None,
                       help="MLflow store (default: sqlite:///cohortfl-demo/mlflow.db)")
    board.add_argument("--experiment", default=None, help="experiment (default: from conf)")
    board.add_argument("--batch", default=None, help="only the submissions of one demo batch")
    board.add_argument("--format", choices=("text", "csv", "json", "html"), default="text",
                       help="text (the table and the runs not on it), the board's rows as csv or json, "
                       "or its picture as an HTML page")
    budget = commands.add_parser("budget", help="a contributor's budgets: submissions, compute and "
                                 "privacy used and left")
    budget.add_argument("--contributor", required=True)
    budget.add_argument("--tracking-uri", default=None, help="MLflow store (default: from conf)")
    budget.add_argument("--experiment", default=None, help="experiment (default: from conf; on a "
                        "workspace: cohortfl/<your name>)")
    exports = commands.add_parser("exports", help="print the node's export ledger: what left, for whom")
    exports.add_argument("--contributor", default=None, help="only this contributor's replies")
    exports.add_argument("--state-dir", default=None,
                         help="the node's state directory (default: cohortfl-demo/node-state)")
    policy = commands.add_parser("policy", help="print the node's policy (its limits, privacy included)")
    policy.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. policy=pilot")
    node = commands.add_parser("node", help="the foundation: start its node")
    node.add_argument("--config", type=Path, required=True, help="the node's own YAML file")
    node.add_argument("--key-only", action="store_true",
                      help="check the node's files, make its key, print the public key's path")
    workspace = commands.add_parser("workspace", help="the foundation: start its workspace")
    workspace.add_argument("--dir", type=Path, required=True, help="the workspace's folder")
    workspace.add_argument("--host", default="127.0.0.1", help="address nodes and contributors use")
    workspace.add_argument("--fleet-port", type=int, default=9092)
    workspace.add_argument("--intake-port", type=int, default=9443)
    workspace.add_argument("--mlflow-port", type=int, default=9444)
    workspace.add_argument("--register-node", type=Path, action="append", default=[],
                           help="a node's public key (node-key.pub) to let in")
    workspace.add_argument("overrides", nargs="*", help="Hydra overrides of the run shape, e.g. "
                           "workspace.num_rounds=10")
    publish = commands.add_parser("publish", help="the foundation: copy finished runs to the board "
                                  "every contributor reads")
    publish.add_argument("--dir", type=Path, required=True, help="the running workspace's folder")
    which = publish.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every finished run not yet published")
    which.add_argument("--contributor", help="one contributor's finished runs")
    which.add_argument("--run", help="one run id")
    credential = commands.add_parser("credential", help="issue a contributor's token")
    credential.add_argument("contributor")
    credential.add_argument("--dir", type=Path, required=True, help="the workspace's folder")
    cohort = commands.add_parser("cohort", help="the foundation: its cohort's data dictionary")
    cohort_commands = cohort.add_subparsers(dest="cohort_command", required=True)
    draft = cohort_commands.add_parser("init", help="draft a data dictionary from a cohort file, to review")
    draft.add_argument("file", type=Path, help="the cohort file (.csv or .parquet)")
    draft.add_argument("--out", type=Path, default=Path("dictionary.yaml"), help="a new file to write")
    draft.add_argument("--label", default=None, help="the outcome column (default: guessed by name)")
    draft.add_argument("--id", default=None, help="the record id column (default: guessed by name)")
    draft.add_argument("--genes", type=Path, default=None,
                       help="the panel's gene symbols, one per line: those columns form the group 'gene' "
                            "(Ensembl gene ids are found without it)")
    check = cohort_commands.add_parser("check", help="check a cohort file against a data dictionary, "
                                       "as the node will")
    check.add_argument("file", type=Path, help="the cohort file (.csv or .parquet)")
    check.add_argument("--dictionary", type=Path, required=True, help="the foundation's dictionary YAML")
    check.add_argument("--holdout-size", type=int, default=128)
    check.add_argument("--holdout-fraction", type=float, default=None,
                       help="a share of the records, each record's side fixed by its id (stable as the "
                            "cohort grows), in place of --holdout-size")
    schema = commands.add_parser("schema", help="print the published cohort schema: names, groups, levels, "
                                 "classes, split sizes (never a value)")
    schema.add_argument("--dictionary", type=Path, default=None,
                        help="the foundation's data dictionary (default: the demo's)")
    schema.add_argument("--cohort", type=Path, default=None,
                        help="the cohort file the dictionary is resolved against (read for its header "
                             "and its size); needed with --dictionary")
    schema.add_argument("--holdout-size", type=int, default=128)
    schema.add_argument("--json", action="store_true",
                        help="the schema as the workspace reads it (cohort.published_schema)")
    eda = commands.add_parser("eda", help="the foundation: the cohort's EDA from its training split, counts "
                              "under the policy's eda_min_cell suppressed")
    eda.add_argument("--cohort", type=Path, default=Path("cohortfl-demo/cohort.parquet"),
                     help="the cohort file (default: the demo's)")
    eda.add_argument("--dictionary", type=Path, default=None,
                     help="its data dictionary (default: the demo's)")
    eda.add_argument("--holdout-size", type=int, default=128)
    eda.add_argument("--holdout-fraction", type=float, default=None)
    eda.add_argument("--policy", default="pilot", help="conf/policy/<name>.yaml: its eda_min_cell is k")
    eda.add_argument("--foundation", action="store_true", help="the foundation's own, nothing suppressed "
                     "(a file only)")
    eda.add_argument("--out", type=Path, default=Path("cohort_eda.html"))
    eda.add_argument("--tracking-uri", default=None, help="also log the published EDA to this MLflow")
    eda.add_argument("--experiment", default="cohortfl", help="the experiment it goes to")
    rescore = commands.add_parser("rescore", help="the foundation: score past runs' kept weights on the "
                                  "cohort's new version (a new run each, cohort version on the board)")
    rescore.add_argument("--config", type=Path, default=None,
                         help="the deployed node's own YAML file (default: the local node of the conf)")
    rescore.add_argument("--run", action="append", default=[], help="only this run id (repeatable)")
    rescore.add_argument("overrides", nargs="*", help="Hydra overrides of the local node, e.g. "
                         "cohort=file cohort.path=grown.parquet")
    loopback = commands.add_parser("loopback", help="workspace + node on loopback, for development")
    loopback.add_argument("--dir", type=Path, default=Path("cohortfl-loopback"))
    args, extra = parser.parse_known_args(argv)  # Hydra overrides may follow options
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "budget":
        return print_budget(args.contributor, args.tracking_uri, args.experiment)
    if args.command == "leaderboard":
        return leaderboard(args.tracking_uri, args.experiment, args.batch, args.format)
    if args.command == "exports":
        return print_exports(args.contributor, args.state_dir)
    if args.command == "policy":
        return print_policy(args.overrides)
    if args.command == "new":
        return new_package(args.folder)
    if args.command == "synthesize":
        return synthesize(args.schema, args.out, args.records, args.seed)
    if args.command == "pretrain":
        return pretrain(args.folder, args.cohort, args.schema, args.epochs, args.lr)
    if args.command == "publish":
        return publish_runs(args.dir, args.contributor, args.run)
    if args.command == "cohort":
        return cohort_command(args)
    if args.command == "eda":
        return eda_command(args)
    if args.command == "rescore":
        return rescore_command(args.config, args.run, args.overrides)
    if args.command == "schema":
        return print_schema(args.dictionary, args.cohort, args.holdout_size, args.json)
    if args.command in ("node", "workspace", "credential", "loopback"):
        return run_role(args)
    if args.command == "submit" and args.workspace:
        return submit_remote(args.package, args.workspace, args.ca, args.token_file)
    if args.command == "submit" and not args.contributor:
        parser.error("submit needs --workspace (the foundation's) or --contributor (a local simulation)")
    package = (args.package, args.contributor) if args.command == "submit" else None
    return submit_all(args.overrides, demo=args.command == "demo", verbose=args.verbose,
                      package=package)


#: The simulation engine runs the ServerApp in the node's process tree: no sandbox there.
SIMULATION_REFUSES_CONTRIBUTOR_CODE = (
    "strategy.py runs on the simulation engine only against the synthetic cohort: the engine runs "
    "the ServerApp in the node's process tree. Against the foundation's cohort, submit to its "
    "workspace, where the strategy runs in a sandbox: cohortfl submit PACKAGE --workspace URL")


def submit_all(overrides: list[str], demo: bool, verbose: bool,
               package: tuple[Path, str] | None = None) -> int:
    """Compose the config, prepare the cohort, run the submissions, print the table.

    ``package`` (folder, contributor) replaces the configured submission by a
    contributor's package, checked before any of it runs.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from client.errors import NodeError
    from client.node import check_cohort
    from server.config import load_job
    from server.intake import load_package
    from server.signing import WorkspaceSigner
    from server.tracking import check_tracking_uri
    from server.workspace import Workspace
    from synthetic.pretraining import with_pretrained_weights

    started = time.perf_counter()
    memory = PeakMemory()
    try:
        job = load_job(overrides, demo)
        if package:
            shape = job.entries[0].submission
            submissions = [load_package(package[0], package[1], shape.local_epochs, shape.num_rounds,
                                        job.node.policy.max_array_bytes)]
            if submissions[0].strategy_source and job.workspace.synthetic_seed is None:
                raise ValueError(SIMULATION_REFUSES_CONTRIBUTOR_CODE)
        else:  # the contributors' own step, before they submit: pretraining on their cohorts
            submissions = [with_pretrained_weights(e.submission, e.pretraining, job.output_dir / "pretrained")
                           if e.pretraining else e.submission for e in job.entries]
        if job.workspace.synthetic_seed is not None:
            write_synthetic_cohort(job.workspace.cohort_path, job.workspace.synthetic_seed,
                                   job.workspace.synthetic_disease)
        schema = check_cohort(job.node)  # in simulation this command is also the node's operator
        check_tracking_uri(job.node.tracking_uri)  # before any engine starts
        workspace = Workspace(job.node, job.workspace.experiment,
                              WorkspaceSigner(job.workspace.signing_key), verbose=verbose, schema=schema)
        notices = [workspace.check(submission) for submission in submissions]
    except (NodeError, HydraException, OmegaConfBaseException, ValueError, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2

    batch = time.strftime("%Y%m%dT%H%M%S")
    parallel = min(job.workspace.parallel_runs, len(submissions))
    print(f"{len(submissions)} submission(s), {parallel} at a time:")
    for submission, notice in zip(submissions, notices, strict=True):
        print(f"  {submission.contributor}: {submission.strategy_name} + {submission.model.name}, "
              f"{submission.num_rounds} rounds" + "".join(f"\n    notice: {n}" for n in notice))
    try:
        outcomes = workspace.submit_all(submissions, batch=batch, parallel=parallel,
                                        progress=partial(ConsoleProgress, started=time.time()),
                                        notices=notices)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the runs of batch {batch} that had not ended are marked KILLED in "
              f"{job.node.tracking_uri}; the node's ledger keeps what ran", file=sys.stderr)
        return 130
    failed = 0
    for outcome in outcomes:
        if not outcome.ok:
            failed += 1
            print(f"{outcome.submission.contributor} failed: {outcome.error}", file=sys.stderr)

    print()
    picture = eda = ""
    try:
        print(board(job.node.tracking_uri, job.workspace.experiment, batch))
        if demo:  # the demo's board is a whole board: its picture is drawn anew, its cohort described
            picture = draw_picture(job.node.tracking_uri, job.workspace.experiment, workspace.experiment_id)
            eda = publish_eda(job.node, workspace.experiment_id)
    except Exception as ex:  # the store went away during the runs: the outcomes above say so
        print(f"(the leaderboard cannot be read now: {type(ex).__name__} from {job.node.tracking_uri})")
    print()
    wall = time.perf_counter() - started
    print(f"{len(submissions) - failed} of {len(submissions)} submissions finished in {wall:.1f} s; "
          f"peak memory {memory.stop():.0f} MB (all processes together)")
    from server.leaderboard import board_link, picture_link

    ui = job.node.tracking_uri if job.node.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    if not job.node.tracking_uri.startswith("http"):
        print(f"MLflow UI:   mlflow ui --backend-store-uri {job.node.tracking_uri} --port 5000, then")
    print(f"the board:   {board_link(ui, workspace.experiment_id)}")
    if picture:
        print(f"its picture: {picture_link(ui, workspace.experiment_id, picture)}")
    if eda:
        print(f"cohort EDA:  {picture_link(ui, workspace.experiment_id, eda)} (published: counts "
              f"under {job.node.policy.eda_min_cell} suppressed)")
    print(f"Leaderboard: cohortfl leaderboard --tracking-uri {job.node.tracking_uri}")
    return 1 if failed else 0


def run_role(args: argparse.Namespace) -> int:
    """The deployment's role commands; each runs until Ctrl-C or SIGTERM and stops what it started."""
    import logging

    from client.errors import NodeError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.command == "node":
            from client.service import NodeService, prepare, run_node

            service = NodeService.from_file(args.config)
            if args.key_only:
                print(prepare(service))
                return 0
            return run_node(service, stop)
        if args.command == "credential":
            from server.deployment import Layout
            from server.intake_service import Credentials

            print(Credentials(Layout(args.dir.resolve()).credentials).issue(args.contributor))
            return 0
        if args.command == "loopback":
            from server.loopback import run_loopback

            return run_loopback(args.dir, stop)
        from server.deployment import WorkspaceService

        service = WorkspaceService(args.dir, args.host, args.fleet_port, args.intake_port,
                                   args.mlflow_port, overrides=tuple(args.overrides))
        service.start()
        try:
            for key in args.register_node:
                service.register_node(key)
            print(f"workspace up: nodes connect to {args.host}:{service.fleet_port} with "
                  f"{service.layout.ca} and write to {service.tracking_uri} with "
                  f"{service.node_tracking_account}; contributors submit to "
                  f"https://{args.host}:{service.intake_port}", flush=True)
            stop.wait()
        finally:
            service.stop()
        return 0
    except KeyboardInterrupt:
        return 130
    except (NodeError, ValueError, RuntimeError, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2


def new_package(folder: Path) -> int:
    """Write the example package and say how to run it."""
    from server.scaffold import write_package

    try:
        written = write_package(folder)
    except OSError as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"try it on the local engine (synthetic cohort):\n  cohortfl submit {folder} "
          f"--contributor YOUR_NAME\nthen send it to the foundation's workspace:\n  cohortfl submit "
          f"{folder} --workspace URL --ca ca.crt --token-file YOUR.token")
    return 0


def synthesize(schema_path: Path | None, out: Path, n_records: int, seed: int) -> int:
    """``cohortfl synthesize``: a synthetic cohort with a published schema's columns, levels and classes."""
    from contract.schema import SCHEMA, CohortSchema
    from synthetic.shaped import draw_shaped

    try:
        if out.suffix not in (".parquet", ".csv"):
            raise ValueError(f"--out must end in .parquet or .csv, not '{out.suffix}'")
        if out.exists():
            raise ValueError(f"{out} exists; nothing was written")
        schema = SCHEMA if schema_path is None else CohortSchema.from_json(schema_path.read_text())
        table = draw_shaped(schema, n_records, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            table.to_parquet(out, index=False)
        else:
            table.to_csv(out, index=False)
    except (ValueError, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    given = f" cohort.dictionary={schema_path.resolve()}" if schema_path else ""
    print(f"wrote {out}: {len(table)} synthetic records in the schema's {len(schema.feature_columns)} "
          f"feature columns and classes {', '.join(schema.classes)} (generic values: nothing of the "
          f"foundation's records)\ntry a package on it:\n  cohortfl submit PACKAGE --contributor NAME "
          f"cohort=file cohort.path={out.resolve()}{given}")
    return 0


def pretrain(folder: Path, cohort: Path, schema: Path | None, epochs: int, lr: float | None) -> int:
    """``cohortfl pretrain``: the package's model pretrained on the contributor's own cohort."""
    from client.errors import NodeError
    from contract.dictionary import DictionaryError
    from server.errors import PackageRefused
    from server.pretrain import pretrain_package

    try:
        path = pretrain_package(folder, cohort, schema, epochs, lr)
    except (PackageRefused, NodeError, DictionaryError, ValueError, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size} bytes): the package starts from these weights")
    return 0


def print_schema(dictionary_path: Path | None, cohort: Path | None, holdout_size: int, as_json: bool) -> int:
    """``cohortfl schema``: the published cohort schema, from the node's dictionary and the header
    and size of its cohort file (the demo's when neither is given)."""
    from client.cohort import published_schema
    from client.errors import NodeError
    from conf import CONF_DIR
    from contract.dictionary import DataDictionary, DictionaryError, describe

    if (dictionary_path is None) != (cohort is None):
        print("cohortfl: give both --dictionary and --cohort, or neither (the demo's schema)",
              file=sys.stderr)
        return 2
    try:
        schema, n_records = published_schema(cohort, dictionary_path)
        dictionary = DataDictionary.from_yaml(dictionary_path or CONF_DIR / "dictionary" / "synthetic.yaml")
    except (NodeError, DictionaryError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    if as_json:
        print(schema.to_json())
        return 0
    split = (n_records - holdout_size, holdout_size) if n_records else None
    print("\n".join(describe(schema, dictionary, split)))
    return 0


def cohort_command(args: argparse.Namespace) -> int:
    """``cohortfl cohort init|check``: the foundation's data dictionary, on its own machine."""
    from client.cohort import check_with_dictionary, float_columns, read_table
    from client.errors import CohortValidationError
    from contract.dictionary import DictionaryError, draft
    from contract.files import create_once

    try:
        if args.cohort_command == "check":
            print("\n".join(check_with_dictionary(args.file, args.dictionary, args.holdout_size,
                                                   holdout_fraction=args.holdout_fraction)))
            return 0
        if args.out.exists():
            raise DictionaryError(f"{args.out} exists: review it, or name another file with --out")
        symbols = args.genes.read_text(encoding="utf-8").split() if args.genes else ()
        table, _ = read_table(args.file, float_columns(args.file))  # a 20,000-gene panel: one block
        dictionary = draft(table, label=args.label, id_column=args.id, gene_symbols=symbols)
        text = ("# Drafted by `cohortfl cohort init` from the columns of " + args.file.name + ": review it.\n"
                "# Put label.classes in their order (ordinal: true if they are ordered), set label.reported\n"
                "# (the class whose recall the board shows), name the groups, add units and descriptions.\n"
                "# It holds names and levels, never a record's value.\n")
        create_once(args.out, (text + dictionary.to_yaml()).encode())
    except (DictionaryError, CohortValidationError, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    groups = ", ".join(f"{g.name} ({', '.join(g.columns[:2])}{', ...' if len(g.columns) > 2 else ''})"
                       for g in dictionary.groups)
    print(f"wrote {args.out}: id {dictionary.id_column}, label {dictionary.label_column} "
          f"({len(dictionary.classes)} classes), numeric groups {groups}, "
          f"{len(dictionary.categorical)} categorical, {len(dictionary.may_be_missing)} with missing cells\n"
          f"check it: cohortfl cohort check {args.file} --dictionary {args.out}")
    return 0


def publish_runs(workspace_dir: Path, contributor: str | None, run_id: str | None) -> int:
    """Publish finished runs on the running workspace's MLflow; print the copies' ids."""
    from mlflow.exceptions import MlflowException

    from server.embargo import publish_from

    try:
        copies = publish_from(workspace_dir, contributor, run_id)
    except (ValueError, OSError, MlflowException) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    print(f"published {len(copies)} run(s)" + "".join(f"\n  {run}" for run in copies))
    return 0


def submit_remote(package: Path, url: str, ca: Path | None, token_file: Path | None) -> int:
    """Send a package to the foundation's workspace and print what it answered."""
    from server.errors import PackageRefused
    from server.intake_service import submit_to_workspace

    if ca is None or token_file is None:
        print("cohortfl: --workspace needs --ca and --token-file", file=sys.stderr)
        return 2
    try:
        answer = submit_to_workspace(package, url, ca, token_file.read_text(encoding="utf-8").strip())
    except (PackageRefused, OSError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    for notice in answer.get("notices") or []:
        print(f"notice: {notice}")
    if answer.get("ok"):
        print(f"submission {answer['submission_id']} finished; its scores are in the workspace's MLflow")
        return 0
    if answer.get("pending"):
        print(f"submission {answer['submission_id']} ended; {answer['error']}")
        return 0
    if "submission_id" not in answer:  # refused before anything ran (401, 413, 422, 503)
        print(f"cohortfl: refused: {answer.get('error')}", file=sys.stderr)
        return 2
    print(f"cohortfl: submission {answer['submission_id']} failed: {answer.get('error')}", file=sys.stderr)
    return 1


def write_synthetic_cohort(path: Path, seed: int, disease: str = "demo") -> None:
    """Write a synthetic cohort (the demo's disease, or the second one: ``myopathy``) where the
    node will read it."""
    from synthetic.diseases import synthetic_disease

    table = synthetic_disease(disease, "cohort.disease").foundation(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")  # a node starting now reads it whole
    table.to_parquet(staging, index=False)
    os.replace(staging, path)
    print(f"synthetic cohort: {len(table)} records, {table.shape[1] - 2} features -> {path}")


def leaderboard(tracking_uri: str | None, experiment: str | None, batch: str | None,
                form: str = "text") -> int:
    """Print the leaderboard of an MLflow store (it never creates one, and imports no engine)."""
    from server.errors import LeaderboardError, TrackingStoreError
    from server.hydra_config import compose_config
    from server.hydra_config import tracking_uri as default_uri
    from server.tracking import check_tracking_uri

    cfg = compose_config()
    uri = tracking_uri or default_uri(cfg)
    experiment = experiment or str(cfg.tracking.experiment)
    try:
        check_tracking_uri(uri, must_exist=True)  # reading a board never creates a store
        if form == "text":
            print(board(uri, experiment, batch))
        else:
            print_records(uri, experiment, batch, form)
    except (LeaderboardError, TrackingStoreError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    return 0


def print_budget(contributor: str, tracking_uri: str | None, experiment: str | None) -> int:
    """A contributor's budgets, as the node recorded them on their latest run."""
    from server.errors import LeaderboardError, TrackingStoreError
    from server.hydra_config import compose_config
    from server.hydra_config import tracking_uri as default_uri
    from server.leaderboard import format_budget, read_budget
    from server.tracking import check_tracking_uri

    cfg = compose_config()
    uri = tracking_uri or default_uri(cfg)
    try:
        check_tracking_uri(uri, must_exist=True)
        budget = read_budget(uri, experiment or str(cfg.tracking.experiment), contributor)
    except (LeaderboardError, TrackingStoreError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    if budget is None:
        print(f"{contributor} has no run here yet: every budget is whole (`cohortfl policy` shows them)")
        return 0
    print(format_budget(contributor, budget))
    return 0


def print_records(uri: str, experiment: str, batch: str | None, form: str) -> None:
    """The board's rows as csv or json, or its picture as HTML, on standard output."""
    import csv
    import json

    from server.leaderboard import as_records, read_leaderboard

    rows = read_leaderboard(uri, experiment, batch)
    if form == "html":
        from server.board_picture import render

        print(render(rows, f"cohortfl leaderboard: {experiment}"), end="")
        return
    records = as_records(rows)
    if form == "json":
        print(json.dumps(records, indent=1))
    elif records:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


PUBLISHED_EDA_TITLE = "The cohort, as contributors see it"


def publish_eda(node, experiment_id: str) -> str:  # node: NodeSettings
    """The cohort's published EDA (suppressed at the policy's ``eda_min_cell``), logged as the one
    EDA run of the experiment; the run's id. In simulation this command is the node's operator."""
    from mlflow.tracking import MlflowClient

    from client.eda import eda_of_file, log_eda

    report = eda_of_file(node.data_path, node.dictionary or None, node.policy.eda_min_cell,
                         node.holdout_size, node.split_seed, node.holdout_fraction)
    return log_eda(MlflowClient(node.tracking_uri), experiment_id, report, PUBLISHED_EDA_TITLE)


def eda_command(args: argparse.Namespace) -> int:
    """``cohortfl eda``: the cohort's EDA as an HTML page (the published one, or the foundation's),
    and the published one logged to MLflow when a tracking URI is given."""
    from client.eda import eda_of_file, log_eda, to_html
    from client.errors import CohortValidationError
    from client.settings import load_policy
    from conf import CONF_DIR
    from contract.dictionary import DictionaryError

    if args.foundation and args.tracking_uri:
        print("cohortfl: the foundation's EDA is not suppressed: it is written to a file, never logged",
              file=sys.stderr)
        return 2
    k = 1 if args.foundation else load_policy(CONF_DIR / "policy" / f"{args.policy}.yaml").eda_min_cell
    try:
        report = eda_of_file(args.cohort, args.dictionary, k, args.holdout_size,
                             holdout_fraction=args.holdout_fraction)
    except (CohortValidationError, DictionaryError) as ex:
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    title = "The cohort, for the foundation only" if args.foundation else PUBLISHED_EDA_TITLE
    args.out.write_text(to_html(report, title), encoding="utf-8")
    print(f"wrote {args.out}: {report.n_records} training records, "
          + ("nothing suppressed (the foundation's own)" if k == 1 else f"counts under {k} suppressed"))
    if args.tracking_uri:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(args.tracking_uri)
        found = client.get_experiment_by_name(args.experiment)
        experiment = found.experiment_id if found else client.create_experiment(args.experiment)
        print(f"logged to {args.tracking_uri}, experiment {args.experiment}: run "
              f"{log_eda(client, experiment, report, title)}")
    return 0


def rescore_command(config: Path | None, run_ids: list[str], overrides: list[str]) -> int:
    """``cohortfl rescore``: the node's kept runs scored on the cohort it serves now."""
    from client.errors import NodeError
    from client.node import Node
    from client.rescore import rescore
    from server.config import compose_config, node_settings

    try:
        if config is not None:
            from client.service import NodeService

            service = NodeService.from_file(config)
            os.environ.update(service.tracking_environment())
            settings = service.settings
        else:
            settings = node_settings(compose_config(overrides))
        results = rescore(Node(settings), run_ids)
    except NodeError as ex:  # the cohort's validation and the node's rules included
        print(f"cohortfl: {ex}", file=sys.stderr)
        return 2
    done = [r for r in results if not r.skipped]
    print(f"{len(done)} run(s) rescored, {len(results) - len(done)} skipped; the board shows each "
          "score's cohort version: cohortfl leaderboard")
    return 0


def draw_picture(uri: str, experiment: str, experiment_id: str) -> str:
    """The whole board's picture, logged as a run of its experiment; the run's id."""
    from mlflow.tracking import MlflowClient

    from server.board_picture import log_picture
    from server.leaderboard import read_leaderboard

    return log_picture(MlflowClient(uri), experiment_id, read_leaderboard(uri, experiment),
                       f"cohortfl leaderboard: {experiment}")


def board(uri: str, experiment: str, batch: str | None) -> str:
    """The leaderboard, then the submissions that are not on it and why."""
    from server.leaderboard import format_leaderboard, format_unfinished, read_leaderboard, read_unfinished

    unfinished = format_unfinished(read_unfinished(uri, experiment, batch))
    return format_leaderboard(read_leaderboard(uri, experiment, batch)) + (
        f"\n\n{unfinished}" if unfinished else "")




def print_exports(contributor: str | None, state_dir: str | None) -> int:
    """Print every reply the node recorded as sent, with totals."""
    from client.ledger import NodeLedger
    from server.config import compose_config, node_settings

    settings = node_settings(compose_config())
    path = Path(state_dir) / "ledger.sqlite" if state_dir else settings.ledger_path
    if not path.is_file():
        print(f"cohortfl: no node ledger at {path}", file=sys.stderr)
        return 2
    ledger = NodeLedger(path)
    print(f"{'run':8}  {'contributor':11}  {'ended at':21}  {'rounds':>6}  {'compute (PF)':>12}  device s")
    for charge in ledger.charges(contributor):
        ended = "final score" if charge.phase == "closed" else charge.phase
        print(f"{charge.run_id[:8]:8}  {charge.contributor:11}  {ended:21}  {charge.rounds:6d}  "
              f"{charge.flops / 1e15:12.4g}  {charge.device_seconds:.1f}")
    print("(a submission counts once its out-of-the-box score is recorded; a round once it ran; "
          "why a run ended early: cohortfl leaderboard)\n")
    rows = ledger.exports(contributor)
    print(f"{'time (UTC)':19}  {'contributor':11}  {'run':8}  {'message':19}  {'bytes':>8}  records")
    for row in rows:
        shapes = ", ".join(f"{k}{tuple(v)}" for k, v in row.shapes.items())
        scalars = ", ".join(k for k in row.keys if k not in row.shapes)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.at))
        print(f"{when:19}  {row.contributor:11}  {row.run_id[:8]:8}  {row.message_type:19}  "
              f"{row.bytes:8d}  {'; '.join(x for x in (shapes, scalars) if x)}")
    print(f"{len(rows)} replies, {sum(r.bytes for r in rows)} bytes"
          + (f" for {contributor}" if contributor else ""))
    return 0


def print_policy(overrides: list[str]) -> int:
    """Print the limits the node enforces, as contributors may read them."""
    from dataclasses import asdict

    from server.config import compose_config, node_settings

    policy = node_settings(compose_config(overrides)).policy
    for key, value in asdict(policy).items():
        print(f"{key:24} {value}")
    if not policy.dp_enabled:
        print("\nWARNING: differential privacy is off. A strategy chooses the weights the node trains "
              "from,\nso it can build a model whose update copies training records into the reply "
              "(docs/privacy.md:\nthe imprint attack recovered 331 of 512 in one round). Only "
              "trusted strategies should run.")
    return 0


class ConsoleProgress:
    """Prints one submission's phases and every quarter of its rounds, one line each."""

    def __init__(self, submission, started: float) -> None:  # submission: Submission
        self.label = submission.contributor
        self.started = started  # the demo's clock: time.time() when it began

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``phase`` are complete."""
        if phase == "round" and (done == 0 or done not in {total, *(total * q // 4 for q in (1, 2, 3))}):
            return
        text = {"engine": "engine starting (Flower's simulation, Ray, the node's ClientApp)",
                Moment.OUT_OF_THE_BOX: "holdout out of the box recorded by the node",
                Moment.FINE_TUNED: "fine-tuned holdout recorded by the node"}.get(
            phase, f"round {done}/{total}")
        print(f"  [{self.label}] {text} (at {time.time() - self.started:.1f} s)", flush=True)


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (pool
    workers, Ray's processes, the node's actors) in a background thread."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self._root = psutil.Process()
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        """Keep the largest sum of RSS seen over the process tree."""
        import psutil

        while not self._stop.wait(interval):
            total = 0
            for process in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # ended between listing and reading
                    pass
            self.peak_bytes = max(self.peak_bytes, total)

    def stop(self) -> float:
        """Stop sampling; return the peak in MB."""
        self._stop.set()
        self._thread.join()
        return self.peak_bytes / 2**20


if __name__ == "__main__":
    sys.exit(main())
