"""An Optuna search samples what the spec says (networks, points, variants; every seed), or refuses in one
line what one search cannot cover (several datasets, a per-network point mapping, an unknown dimension).

The end-to-end test uses the toy task of tests/plugins, like tests/test_study.py.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from study import tracking
from study.spec import load_spec
from test_study import dpl, toy_task, trial_runs, write_spec  # noqa: F401 - fixture
from trainables.config import ConfigError, TrialConfig

#: The paper's 14 networks (spec/STUDY.md's table), written out here rather than read from the registry.
PAPER_NETWORKS = {
    "alexnet", "vgg11", "vgg16", "vgg16_bn", "vgg19", "squeezenet1_1", "resnet18", "resnet50", "resnext50_32x4d",
    "densenet121", "googlenet", "inception_v3", "efficientnet_b0", "efficientnet_b7",
}


def spec_of(tmp_path: Path, task: str = "similarity", task_settings: dict | None = None, space: dict | None = None,
            **top) -> object:
    raw = {"name": "s", "weights": "random", "tasks": {task: task_settings or {}},
           "search": {"type": "optuna", "num_samples": 4, "space": space or {}}, **top}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path, storage=tmp_path / "study")


def sample_configs(spec, n: int) -> list[TrialConfig]:
    """`n` samples of the space, as the driver builds them (Optuna's random sampler, in memory)."""
    import optuna

    from study.search import _suggest, sample_trials, search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        values = {name: _suggest(trial, name, dist) for name, dist in space.sampled().items()}
        out += [p.config for p in sample_trials(spec, space, values)]
        study.tell(trial, 0.0)
    return out


def test_networks_all_is_searched_over_the_papers_14(tmp_path) -> None:
    spec = spec_of(tmp_path, networks="all", points=["p1", "p4"])
    configs = sample_configs(spec, 60)
    networks = {c.network for c in configs}
    assert networks <= PAPER_NETWORKS and len(networks) >= 10, networks  # 60 uniform draws of 14: >= 10 seen
    from trainables import loss_networks as ln

    # p1/p4 resolved per sampled network: each config's point is that network's first or last paper point
    assert all(c.point in (ln.REGISTRY[c.network].points[0], ln.REGISTRY[c.network].points[3]) for c in configs)
    assert {c.point == ln.REGISTRY[c.network].points[3] for c in configs} == {True, False}


def test_spec_lists_become_dimensions_and_the_space_overrides_them(tmp_path) -> None:
    from study.search import search_space

    spec = spec_of(tmp_path, task_settings={"variants": ["baseline", "lin"], "networks": ["alexnet", "vgg16"]},
                   networks=["squeezenet1_1"], points="all")
    space = search_space(spec)
    assert space.sampled() == {"network": {"choices": ["alexnet", "vgg16"]},  # the task's own networks win
                               "point": {"choices": ["p1", "p2", "p3", "p4"]},
                               "variant": {"choices": ["baseline", "lin"]}}
    assert {(c.network, c.variant) for c in sample_configs(spec, 40)} == {
        (n, v) for n in ("alexnet", "vgg16") for v in ("baseline", "lin")}

    spec = spec_of(tmp_path, networks=["alexnet", "vgg16"], points=["p1", "p2"],
                   space={"network": {"choices": ["vgg16"]}, "params.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    space = search_space(spec)
    assert space.fixed() == {"network": "vgg16", "variant": "baseline"}
    assert set(space.sampled()) == {"point", "params.lr"}
    configs = sample_configs(spec, 10)
    assert {c.network for c in configs} == {"vgg16"} and all(1e-4 <= c.params["lr"] <= 1e-2 for c in configs)


def test_every_sample_runs_on_every_seed(tmp_path) -> None:
    spec = spec_of(tmp_path, networks=["alexnet"], points=["p1", "p2"], seeds=[3, 1, 4])
    configs = sample_configs(spec, 5)
    assert [c.seed for c in configs] == [3, 1, 4] * 5
    # the seeds of one sample differ only in the seed
    for i in range(0, 15, 3):
        assert len({c.replace(seed=0).to_dict().__repr__() for c in configs[i:i + 3]}) == 1


@pytest.mark.parametrize("settings, top, space, message", [
    ({"datasets": ["svhn", "stl10"]}, {}, {}, "tasks.autoencoder.datasets: a search covers one dataset, got svhn, "
     "stl10.*run one search per dataset, e.g. --set tasks.autoencoder.datasets=svhn"),
    ({}, {"points": {"squeezenet1_1": ["features.3"]}}, {}, "points: a per-network mapping.*search.space.point"),
    ({}, {}, {"dataset": {"choices": ["svhn"]}}, "search.space.dataset: unknown dimension; allowed: network, point"),
    ({}, {}, {"colour": {"low": 0, "high": 1}}, "search.space.colour: unknown dimension"),
    ({}, {}, {"network": {"low": 0, "high": 1}}, "search.space.network: a categorical dimension; give choices"),
    ({}, {}, {"point": {"choices": ["all"]}}, "search.space.point: 'all' is several points"),
    ({}, {}, {"network": {"choices": ["resnet5"]}}, "did you mean resnet50"),
    ({}, {}, {"params.lr": {"choices": []}}, r"search.space.params.lr.choices: \[\] is not a non-empty list"),
    ({}, {}, {"params.epoch": {"choices": [1, 2]}}, "unknown task setting.*epoch"),
    ({}, {"search": {"type": "optuna", "metric": "psnr"}}, None, "search.metric: 'psnr'; allowed: probe/"),
])
def test_what_one_search_cannot_cover_is_refused_in_one_line(tmp_path, settings, top, space, message) -> None:
    from study.search import search_space

    with pytest.raises(ConfigError, match=message) as info:
        search_space(spec_of(tmp_path, task="autoencoder", task_settings=settings, space=space,
                             **{"networks": ["squeezenet1_1"], "points": ["p1"], **top}))
    assert "\n" not in str(info.value)


def test_driver_refuses_an_unsearchable_spec_before_writing_anything(tmp_path) -> None:
    from study.driver import run_study

    spec = spec_of(tmp_path, task="autoencoder", task_settings={"datasets": ["svhn", "stl10"]},
                   networks=["squeezenet1_1"], points=["p1"])
    with pytest.raises(ConfigError, match="one search per dataset"):
        run_study(spec)
    assert not (tmp_path / "study" / "mlflow.db").exists() and not (tmp_path / "study" / "optuna.db").exists()


@pytest.mark.slow
def test_search_tells_optuna_the_mean_over_seeds(tmp_path) -> None:
    """Two samples x two seeds under Ray and MLflow: four runs, and each Optuna value is the mean of its
    two runs' `score` as MLflow holds it. The study records what the search ran (2 samples x 2 seeds), not
    the grid it drew from (3 points x 2 seeds), and status and report say "search" with samples done/left."""
    import optuna

    spec = write_spec(tmp_path, name="search", seeds=[0, 1], networks=["squeezenet1_1"], points=["p1", "p2", "p3"],
                      tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 1}}},
                      search={"type": "optuna", "num_samples": 2, "batch_size": 2,
                              "space": {"params.lr": {"low": 0.01, "high": 0.5, "log": True}}})
    study_dir = tmp_path / "study"
    result = dpl("run", str(spec), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optuna search over point, params.lr" in result.stderr
    stored = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    complete = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    runs = {k: rid for k, status, rid in trial_runs(study_dir, "search") if status == "FINISHED"}
    for t in complete:
        keys = t.user_attrs["trial_keys"]
        assert len(keys) == 2 and set(keys) <= set(runs)
        seeds = sorted(int(c.get_run(runs[k]).data.params["seed"]) for k in keys)
        assert seeds == [0, 1]
        scores = [c.get_run(runs[k]).data.metrics["score"] for k in keys]
        assert scores[0] != scores[1]  # the seeds really differ, so the mean is not either one
        assert t.value == pytest.approx(statistics.fmean(scores), rel=1e-12)
    # what the search ran is what the study records: the drawn trials, each naming its sample, not the grid
    drawn = {k for t in complete for k in t.user_attrs["trial_keys"]}
    plan = json.loads((study_dir / "plan.json").read_text())
    assert {r["trial_key"] for r in plan} == drawn and len(plan) == 4 < 6
    assert sorted(n for r in plan for n in r["samples"]) == sorted([t.number for t in complete] * 2)
    exp = c.get_experiment_by_name("search")
    parent = tracking.study_run(c, exp.experiment_id)
    logged = json.loads(Path(c.download_artifacts(parent.info.run_id, "plan.json", str(tmp_path))).read_text())
    assert {r["trial_key"] for r in logged} == drawn
    record = json.loads(Path(c.download_artifacts(parent.info.run_id, "search.json", str(tmp_path))).read_text())
    assert (record["num_samples"], record["n_seeds"], record["max_trials"], record["samples_done"],
            record["samples_left"]) == (2, 2, 4, 2, 0)
    assert "; search optuna: 2 of 2 samples done, 0 left (each on 2 seeds)" in result.stderr
    status = dpl("status", str(study_dir))
    assert "search optuna: 2 of 2 samples done, 0 left (each on 2 seeds)" in status.stdout, status.stdout
    st = json.loads(dpl("status", str(study_dir), "--json").stdout)
    assert st["total"]["planned"] == 4 and st["total"]["pending"] == 0
    assert {k: st["search"][k] for k in ("type", "samples", "done", "left", "seeds")} == \
        {"type": "optuna", "samples": 2, "done": 2, "left": 0, "seeds": 2}
    from analysis.report import analyze

    analyze(tracking.default_tracking_uri(study_dir), "search", tmp_path / "report", figures=False,
            log_to_mlflow=False)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Search (optuna): 2 of 2 samples done, 0 left, each on 2 seeds." in report
    assert "missing" not in (tmp_path / "report" / "coverage.csv").read_text()


def test_samples_done_counts_samples_whose_every_seed_ended() -> None:
    """A sample is spent when each of its trials ended (finished or failed); one RUNNING or never started
    seed keeps it open; a configuration drawn by two samples counts for both."""
    from types import SimpleNamespace

    from study.search import samples_done

    def run(status: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(status=status))

    runs = {"a0": run("FINISHED"), "a1": run("FAILED"), "b0": run("FINISHED"), "b1": run("RUNNING"),
            "c0": run("FINISHED")}
    samples = {"a0": [0], "a1": [0], "b0": [1], "b1": [1], "c0": [2, 3], "c1": [2, 3]}
    assert samples_done(samples, runs) == 1  # sample 0; 1 has a RUNNING seed, 2 and 3 a seed never started
    runs["c1"] = run("KILLED")
    assert samples_done(samples, runs) == 3


def test_status_of_a_search_before_its_first_record_says_what_is_left(tmp_path) -> None:
    """Before the driver recorded anything, status takes the budget from the spec: none done, all left."""
    from study.status import _search

    raw = {"search": {"type": "optuna", "num_samples": 12}, "seeds": [0, 1]}
    assert _search({}, raw)["line"] == "search optuna: 0 of 12 samples done, 12 left (each on 2 seeds)"
    recorded = {tracking.SEARCH_TAG: "optuna", tracking.SEARCH_SAMPLES_TAG: "12", tracking.SEARCH_DONE_TAG: "5",
                tracking.SEARCH_SEEDS_TAG: "2"}
    assert {k: v for k, v in _search(recorded, raw).items() if k != "line"} == \
        {"type": "optuna", "samples": 12, "done": 5, "left": 7, "seeds": 2}
    assert _search({}, {"search": {"type": "grid"}, "seeds": [0]}) is None
