"""GreedySampler and HybridSampler keep Optuna's sampler contract: Optuna's own reusable sampler test cases.

A parameter outside the greedy search's space (another knob, a conditional parameter) is sampled by an
independent sampler, as Optuna's TPE and CMA-ES do; the greedy decisions are tested elsewhere
(tests/test_greedy_sampler.py) and do not change.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
from test_study import FAST

from thresh_opt.cli import main
from thresh_opt.samplers import BlockSearchSampler, BlockwiseSampler, GreedySampler, HybridSampler, SensitivitySampler

SPACE = {"blocks.0.a": [0.0, 0.2, 0.4], "blocks.1.a": [0.0, 0.2, 0.4]}


def greedy() -> GreedySampler:
    return GreedySampler(SPACE, loss_inc=1.01)


def hybrid() -> HybridSampler:
    return HybridSampler(greedy(), optuna.samplers.RandomSampler(seed=0), greedy_trials=4)


class TestGreedyBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return greedy


class TestGreedyMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return greedy


class TestHybridBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return hybrid


class TestHybridMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return hybrid


def test_a_parameter_outside_the_space_is_sampled_with_one_warning_and_the_greedy_ones_are_not(caplog):
    sampler = greedy()
    study = optuna.create_study(sampler=sampler)
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    with caplog.at_level(logging.WARNING, logger="thresh_opt.samplers._greedy"):
        for _ in range(3):
            trial = study.ask(dists)
            extra = trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
            assert 1e-3 <= extra <= 1e-1
            trial.set_user_attr("calibration_loss", 3.0)
            study.tell(trial, 3.0)
    warnings = [r.message for r in caplog.records if "learning_rate" in r.message]
    assert len(warnings) == 1 and "RandomSampler" in warnings[0]
    # the greedy parameters are the greedy's proposals: the dense trial first
    assert study.trials[0].params == {"blocks.0.a": 0.0, "blocks.1.a": 0.0,
                                      "learning_rate": study.trials[0].params["learning_rate"]}
    assert study.trials[1].system_attrs["greedy:role"] == "candidate"


def test_the_hybrid_hands_foreign_parameters_to_its_base_sampler():
    class Recording(optuna.samplers.RandomSampler):
        asked: ClassVar[list[str]] = []

        def sample_independent(self, study, trial, name, distribution):
            self.asked.append(name)
            return super().sample_independent(study, trial, name, distribution)

    base = Recording(seed=1)
    study = optuna.create_study(sampler=HybridSampler(greedy(), base, greedy_trials=10))
    trial = study.ask({n: CategoricalDistribution(c) for n, c in SPACE.items()})
    trial.suggest_float("x", 0.0, 1.0)
    assert base.asked == ["x"] and study.trials[0].system_attrs["hybrid:phase"] == "greedy"
    assert trial.params["blocks.0.a"] == 0.0  # the greedy's own: its dense trial


def test_study_files_cannot_set_python_only_options(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**FAST, "sampler": {"name": "greedy", "options": {"kind_of": "att"}}}))
    assert main(["study", "run", str(path)]) == 2
    assert "sampler.options.kind_of: takes a Python object" in capsys.readouterr().err


def sensitivity() -> SensitivitySampler:
    return SensitivitySampler(SPACE, front_size=2)


class TestSensitivityBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return sensitivity


class TestSensitivityMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return sensitivity


def blockwise() -> BlockwiseSampler:
    return BlockwiseSampler(SPACE, targets=[0.2, 0.4])


def blocksearch() -> BlockSearchSampler:
    return BlockSearchSampler(SPACE, seed=0, n_startup_trials=2)


class TestBlockwiseBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return blockwise


class TestBlockwiseMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return blockwise


class TestBlockSearchBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return blocksearch


class TestBlockSearchMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return blocksearch
