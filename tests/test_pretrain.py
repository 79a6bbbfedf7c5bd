"""Pretraining follows the contributor: their own cohort file in the published columns, or a synthetic
centre of either disease; `cohortfl pretrain` writes a package's initial.npz that the node's model
accepts, and refuses a file that does not fit the published schema."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from client.errors import CohortValidationError
from contract.dictionary import DataDictionary, DictionaryError
from contract.schema import SCHEMA
from models import ModelSpec, build_for
from models.pipeline import FeatureSpec
from server.cli import main
from server.intake import load_package
from synthetic.disease import generate_external_cohort
from synthetic.myopathy import DICTIONARY, generate_myopathy, myopathy_gene_sets
from synthetic.pretraining import Pretraining, own_cohort, pretrained_weights

ORDINAL = ModelSpec("linear", {"head": "ordinal", "l2": 0.01})
MYOPATHY_SPEC = FeatureSpec(gene_sets={k: tuple(v) for k, v in myopathy_gene_sets().items()},
                            raw=("clinical", "labs"), transforms={"labs": ("log1p",)},
                            interactions=("age_years", "sex=M"), interaction_left="gene_sets")


def _node_model(schema, features, frame):
    """The model the node builds for these features on its own cohort (another draw)."""
    return build_for(ORDINAL, schema.pipeline(features).fit(frame), len(schema.classes), 0)


def test_a_synthetic_centre_of_the_second_disease_is_drawn_in_its_own_columns():
    frame, labels, schema = own_cohort(Pretraining(disease="myopathy", n_records=300, cohort_seed=4))
    assert len(frame) == 300 and schema.classes == ("remission", "stable", "progressive", "refractory")
    assert set(labels) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="pretrain.disease must be one of"):
        own_cohort(Pretraining(disease="influenza"))


def test_weights_pretrained_on_the_contributors_own_file_fit_the_nodes_model(tmp_path):
    own = tmp_path / "own.csv"
    generate_myopathy(seed=8, n_records=400, external=True).to_csv(own, index=False)
    weights = pretrained_weights(ORDINAL, MYOPATHY_SPEC, Pretraining(epochs=2, cohort_file=str(own),
                                                                     dictionary=str(DICTIONARY)), 0)
    node_frame = generate_myopathy(seed=0)
    schema = DataDictionary.from_yaml(DICTIONARY).resolve(list(node_frame.columns))
    model = _node_model(schema, MYOPATHY_SPEC, node_frame)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in weights.items()} == expected
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


def test_a_file_that_does_not_follow_the_published_columns_is_refused(tmp_path):
    own = tmp_path / "own.csv"
    frame = generate_myopathy(seed=8, n_records=100, external=True)
    frame.drop(columns=["kl6_u_ml"]).to_csv(own, index=False)
    with pytest.raises((CohortValidationError, DictionaryError), match="kl6_u_ml"):
        pretrained_weights(ORDINAL, MYOPATHY_SPEC, Pretraining(epochs=1, cohort_file=str(own),
                                                               dictionary=str(DICTIONARY)), 0)


def test_cohortfl_pretrain_writes_the_packages_initial_weights(tmp_path, capsys):
    package, own, schema = tmp_path / "pkg", tmp_path / "own.parquet", tmp_path / "schema.json"
    assert main(["new", str(package)]) == 0
    generate_external_cohort(seed=3, n_records=300).to_parquet(own, index=False)
    schema.write_text(SCHEMA.to_json())  # what `cohortfl schema --json` publishes
    assert main(["pretrain", str(package), "--cohort", str(own), "--schema", str(schema),
                 "--epochs", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    submission = load_package(package, "me", 1, 20, 2**24)
    with np.load(io.BytesIO(base64.b64decode(submission.initial_weights))) as npz:
        assert {k: npz[k].shape for k in npz.files} == {"linear.weight": (3, 255), "linear.bias": (3,)}
    assert sorted(p.name for p in package.iterdir()) == ["initial.npz", "strategy.py", "submission.yaml"]


def test_cohortfl_pretrain_refuses_clearly_and_leaves_the_package_as_it_was(tmp_path, capsys):
    package, own = tmp_path / "pkg", tmp_path / "own.csv"
    assert main(["new", str(package)]) == 0
    generate_external_cohort(seed=3, n_records=100).drop(columns=["progression"]).to_csv(own, index=False)
    assert main(["pretrain", str(package), "--cohort", str(own), "--epochs", "1"]) == 2
    assert "progression" in capsys.readouterr().err
    assert main(["pretrain", str(package), "--cohort", str(own), "--epochs", "0"]) == 2
    assert main(["pretrain", str(tmp_path / "nowhere"), "--cohort", str(own)]) == 2
    assert sorted(p.name for p in package.iterdir()) == ["strategy.py", "submission.yaml"]
