"""`dpl plan` and the `paper` / `corrected` presets.

The reference conditions are written out here from the issue and the description of the authors' code
(../shared/spec/background/reference_impl.md), not read from the presets, so a condition missing from a
preset, or set to the wrong value, fails. Compute estimates are checked against FLOPs counted by hand.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.plan import expand, plan_report, trial_compute
from study.spec import load_spec, preset_path
from trainables import loss_networks as ln
from trainables.errors import UserError
from trainables.config import TrialConfig
from trainables.trial import prepare

ROOT = Path(__file__).parents[1]

#: task -> setting -> (the authors' value, the corrected value). Conditions of the loss network first.
CONDITIONS = {
    "similarity": {"normalisation": ("imagenet", "imagenet"), "mode": ("eval", "eval"),
                   "transform_input": ("off", "auto"), "weights": ("imagenet", "imagenet"),
                   "lr": (1e-3, 1e-4), "batch_size": (256, 50)},
    "superres": {"normalisation": ("none", "imagenet"), "mode": ("eval", "eval"), "transform_input": ("off", "auto"),
                 "weights": ("imagenet", "imagenet"),
                 "eval_protocol": ("center288", "full"), "train_crop": ("resize_center", "random")},
    "delineation": {"normalisation": ("imagenet", "imagenet"), "mode": ("train", "eval"),
                    "transform_input": ("off", "auto"), "weights": ("imagenet", "imagenet"),
                    "test_resize": (224, 0), "k_train": (1, 3), "k_test": (3, 3), "tolerance": (0, 3.0),
                    "select_on": ("val_bce", "val_quality")},
    "autoencoder": {"normalisation": ("none", "imagenet"), "mode": ("train", "eval"),
                    "transform_input": ("off", "auto"), "weights": ("imagenet", "imagenet"),
                    "probe_loss": ("mse_onehot", "ce"), "probe_standardise": (False, True)},
}
DATASETS = {"similarity": ["bapps"], "superres": ["coco"], "delineation": ["mass_roads"],
            "autoencoder": ["svhn", "stl10"]}
PIXEL_TASKS = {"superres", "delineation", "autoencoder"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    out = {}
    for preset in ("paper", "corrected"):
        spec = load_spec(preset=preset, storage=tmp_path_factory.mktemp(preset) / "study")
        out[preset] = plan_report(spec, compute=False)
    return out


def _value(row: dict, setting: str):
    return row[setting] if setting in row else row["params"][setting]


@pytest.mark.parametrize("preset", ["paper", "corrected"])
def test_full_grid_plus_pixel_baselines(reports, preset) -> None:
    rows = reports[preset]["trials"]
    paper_points = {(n, p) for n, e in ln.REGISTRY.items() for p in e.points}
    assert len(paper_points) == 56
    for task, datasets in DATASETS.items():
        for ds in datasets:
            mine = [r for r in rows if r["task"] == task and r["dataset"] == ds]
            with_net = [(r["network"], r["point"]) for r in mine if r["network"] != "none"]
            pixel = [r for r in mine if r["network"] == "none"]
            assert sorted(with_net) == sorted(paper_points), (task, ds)
            assert len(pixel) == (1 if task in PIXEL_TASKS else 0), (task, ds)
            assert all(r["baseline"] == "pixel" and r["point"] == "none" for r in pixel)
            counts = reports[preset]["counts"]["per_task"][task][ds]
            assert counts == {"trials": len(mine), "loss_network": 56, "pixel_baseline": len(pixel)}
    assert reports[preset]["counts"]["total"] == 56 * 5 + 4
    assert len({r["trial_key"] for r in rows}) == len(rows)


@pytest.mark.parametrize("preset, index", [("paper", 0), ("corrected", 1)])
def test_every_reference_condition_is_visible_with_its_value(reports, preset, index) -> None:
    for row in reports[preset]["trials"]:
        for setting, values in CONDITIONS[row["task"]].items():
            got, want = _value(row, setting), values[index]
            same = got is want if isinstance(want, bool) or isinstance(got, bool) else got == want
            assert same, (preset, row["task"], setting, got)
        assert row["budget"] == "paper" and row["seed"] == 0 and row["variant"] in ("baseline", "default")


def test_paper_and_corrected_differ_only_in_protocol(reports) -> None:
    def grid(preset):
        return {(r["task"], r["dataset"], r["network"], r["point"]): r for r in reports[preset]["trials"]}

    paper, corrected = grid("paper"), grid("corrected")
    assert paper.keys() == corrected.keys()
    assert not {r["trial_key"] for r in paper.values()} & {r["trial_key"] for r in corrected.values()}
    for cell, p in paper.items():  # every other hyper-parameter is the same (same budgets)
        c = corrected[cell]
        named = CONDITIONS[cell[0]]
        assert {k: v for k, v in p["params"].items() if k not in named} == \
               {k: v for k, v in c["params"].items() if k not in named}, cell


def test_paper_preset_gives_a_source_for_every_condition() -> None:
    """Each setting under the tasks and each study-level condition of `paper` cites the reference."""
    lines = preset_path("paper").read_text().splitlines()
    raw = yaml.safe_load("\n".join(lines))
    conditions = {k for task in CONDITIONS.values() for k in task} - {"weights"}
    cited = {}
    for line in lines:
        m = re.match(r"^\s*(\w+):", line)
        if m and m.group(1) in conditions | {"weights", "pixel_baseline", "variants"}:
            cited.setdefault(m.group(1), []).append(bool(re.search(r"#.*\(ref §\d", line)))
    for task, settings in CONDITIONS.items():
        for key, (reference, _) in settings.items():
            if key in ("weights", "transform_input"):  # study level in the preset
                assert raw[key] == reference
            else:
                assert key in raw["tasks"][task] or key in raw["tasks"][task].get("params", {}), (task, key)
    assert all(all(flags) for flags in cited.values()), cited


# -------------------------------------------------------------------------------------------- the CLI


def _dpl_plan_without_side_effects(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from study.cli import main; rc = main(sys.argv[1:]); "
            "leaked = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
            "print('LEAKED', leaked, file=sys.stderr) if leaked else None; sys.exit(rc if not leaked else 99)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DPL_DATA_ROOT": str(cwd / "data")}
    return subprocess.run([sys.executable, "-c", code, "plan", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_dpl_plan_json_imports_neither_ray_nor_mlflow_and_writes_nothing(tmp_path) -> None:
    out = _dpl_plan_without_side_effects(tmp_path, "--preset", "smoke", "--json", "--set", "pixel_baseline=true")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert list(tmp_path.iterdir()) == []  # no studies/, mlruns/, mlflow.db, synthetic data
    assert report["counts"]["total"] == len(report["trials"]) == 10  # smoke: 8 trials + 2 pixel baselines
    assert report["data_root"] == str(tmp_path / "data")
    sr = [r for r in report["trials"] if r["task"] == "superres" and r["network"] != "none"][0]
    assert sr["compute"]["total_gflops"] > 0 and sr["params"]["iterations"] == 60


def test_dpl_plan_text_lists_counts_common_settings_and_trials(tmp_path, monkeypatch, capsys) -> None:
    from study.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--preset", "smoke", "--no-compute", "--set", "tasks.superres.mode=[eval,train]"]) == 0
    out = capsys.readouterr().out
    assert "study smoke: 9 trials" in out
    assert re.search(r"^superres +coco +2 +2 +0", out, re.M)
    assert re.search(r"^  superres: weights=random normalisation=imagenet transform_input=auto budget=smoke", out, re.M)
    assert len(re.findall(r"^  [0-9a-f]{16}  superres:coco:squeezenet1_1:features.1:default:s0  mode=(eval|train)$",
                          out, re.M)) == 2
    assert list(tmp_path.iterdir()) == []


def test_dpl_plan_malformed_spec_is_one_line_exit_2(tmp_path, capsys) -> None:
    from study.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ntasks: {superres: {normalisation: zscore}}\n")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dpl: error: study spec: tasks.superres.normalisation: 'zscore'")
    assert main(["plan", "--preset", "smoke", "--set", "tasks.superres.mode=[eval,warm]"]) == 2
    assert "tasks.superres.mode: 'warm'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- compute


def _conv_flops(h: int, w: int, cin: int, cout: int, k: int) -> int:
    """2 x output pixels x cout x cin x k x k (a multiply-add is 2 FLOPs; bias and activations not counted)."""
    return 2 * h * w * cout * cin * k * k


def test_superres_compute_estimate_is_the_hand_count(tmp_path) -> None:
    """Two crop sizes in one process: the task network's count is cached per process (study.plan), per size."""
    for crop in (64, 96):
        config = prepare(TrialConfig(task="superres", network="alexnet", points=("features.1",), weights="random",
                                     budget="smoke", params={"iterations": 10, "batch_size": 2, "crop_size": crop}))
        # alexnet conv1 (11x11, stride 4, pad 2, 3 -> 64) on the SR output: 15 x 15 outputs at 64 px, 23 x 23 at 96
        side = (crop + 2 * 2 - 11) // 4 + 1
        loss_net = _conv_flops(side, side, 3, 64, 11)
        # Johnson's x4 net on the LR input (16 or 24 px): 9x9 3->64, 8 x 3x3 64->64 (4 residual blocks) at lr,
        # 3x3 64->64 after each x2 upsampling (2 lr, 4 lr), 9x9 64->3 at 4 lr
        lr = crop // 4
        transform = (_conv_flops(lr, lr, 3, 64, 9) + 8 * _conv_flops(lr, lr, 64, 64, 3)
                     + _conv_flops(2 * lr, 2 * lr, 64, 64, 3) + _conv_flops(4 * lr, 4 * lr, 64, 64, 3)
                     + _conv_flops(4 * lr, 4 * lr, 64, 3, 9))
        images = 10 * 2
        got = trial_compute(config)
        # loss net: target forward + output forward and input-gradient backward; task net: forward + backward
        assert got["loss_network_gflops"] == pytest.approx(3 * images * loss_net / 1e9, rel=5e-3)  # metadata rounds
        assert got["transform_gflops"] == pytest.approx(3 * images * transform / 1e9, rel=1e-6), crop
        pixel = trial_compute(prepare(config.replace(network="none", points=())))
        assert pixel["loss_network_gflops"] == 0 and pixel["transform_gflops"] == got["transform_gflops"]


def test_delineation_compute_follows_refinement_steps(tmp_path) -> None:
    base = dict(task="delineation", network="alexnet", points=("features.1",), weights="random", budget="smoke")
    one = trial_compute(prepare(TrialConfig(**base, params={"k_train": 1})))
    three = trial_compute(prepare(TrialConfig(**base, params={"k_train": 3})))
    assert three["loss_network_gflops"] == pytest.approx(one["loss_network_gflops"] * 7 / 3)  # (2k + 1) passes
    assert three["transform_gflops"] == pytest.approx(one["transform_gflops"] * 3)


# ------------------------------------------------------------------------------------------ data roots


def _roots(preset: str, data_root: Path | None, tmp_path: Path) -> set[Path]:
    spec = load_spec(preset=preset, data_root=data_root, storage=tmp_path / preset)
    return {Path(t.config.data_root) for t in expand(spec)}


def test_fetch_all_fills_exactly_what_the_presets_read(tmp_path, monkeypatch) -> None:
    """`dpl data fetch all --out D` (each dataset's download recorded, no network) writes the roots that
    `paper`, `corrected` and `quick` read with --data-root D; `dpl data synth all` writes the same layout."""
    from study import cli
    from trainables.data import ROOT_DIRS, dataset_module

    fetched: dict[str, Path] = {}
    for name in ROOT_DIRS:
        monkeypatch.setattr(dataset_module(name), "download", lambda root, name=name: fetched.setdefault(name, root))
    data = tmp_path / "datasets"
    assert cli.main(["data", "fetch", "all", "--out", str(data)]) == 0
    assert set(fetched) == {"bapps", "superres", "roads", "svhn", "stl10"}
    for preset in ("paper", "corrected", "quick"):
        assert _roots(preset, data, tmp_path) == set(fetched.values()), preset
    monkeypatch.setenv("DPL_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert _roots("paper", None, tmp_path) == {tmp_path / "elsewhere" / p.name for p in fetched.values()}


def test_data_root_precedence_and_resume(tmp_path, monkeypatch) -> None:
    from study.spec import load_saved_spec, save_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DPL_DATA_ROOT", raising=False)
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text("name: r\nweights: random\nnetworks: [alexnet]\npoints: [p1]\n"
                         "tasks: {delineation: {data: roads}}\n")
    roots = lambda s: {t.config.data_root for t in expand(s)}  # noqa: E731
    assert roots(load_spec(spec_path)) == {str(tmp_path / "datasets" / "roads")}  # the default
    monkeypatch.setenv("DPL_DATA_ROOT", str(tmp_path / "env"))
    assert roots(load_spec(spec_path)) == {str(tmp_path / "env" / "roads")}
    spec = load_spec(spec_path, data_root=tmp_path / "flag")
    assert roots(spec) == {str(tmp_path / "flag" / "roads")}
    save_spec(spec)
    assert roots(load_saved_spec(spec.study_dir)) == {str(tmp_path / "flag" / "roads")}  # env ignored on resume
    assert roots(load_saved_spec(spec.study_dir, data_root=tmp_path / "moved")) == {str(tmp_path / "moved" / "roads")}
    legacy = tmp_path / "old"  # a study saved before data roots existed: relative to the current directory
    legacy.mkdir()
    raw = yaml.safe_load((spec.study_dir / "study.yaml").read_text())
    raw.pop("data_root")
    (legacy / "study.yaml").write_text(yaml.safe_dump(raw))
    assert roots(load_saved_spec(legacy)) == {str(tmp_path / "roads")}


def test_every_preset_loads_and_the_cli_offers_each(tmp_path) -> None:
    from study import cli, spec

    assert cli.PRESETS == spec.PRESETS
    for name in spec.PRESETS:
        assert preset_path(name).is_file()
        assert load_spec(preset=name, storage=tmp_path / name).name == name


def test_every_synthetic_size_a_study_or_the_cli_asks_for_exists_in_every_generator(tmp_path) -> None:
    """A quick-budget study on synthetic data asks each generator for the plan's size; so does `dpl data synth
    --size`. (It once asked for 'quick', which no generator had, and roads called its larger size 'demo'.)"""
    from study.cli import build_parser
    from study.plan import SYNTH_SOURCE, _synthetic_size
    from study.spec import load_spec
    from trainables.data import dataset_module

    sizes = set()
    for budget in ("smoke", "quick", "paper"):
        path = tmp_path / f"{budget}.yaml"
        path.write_text(yaml.safe_dump({"name": budget, "tasks": {"superres": {"budget": budget}}}))
        sizes.add(_synthetic_size(load_spec(path, storage=tmp_path / budget)))
    synth = next(a for a in build_parser()._subparsers._group_actions[0].choices["data"]._actions
                 if a.dest == "size")
    assert sizes == set(synth.choices) == {"smoke", "small"}
    for dataset, source in SYNTH_SOURCE.items():
        assert set(dataset_module(source).SYNTH_SIZES) == sizes, dataset


#: sha256 (16 hex digits) of the sorted trial keys each preset planned before the `resize` condition and the
#: extended networks existed (commit fe4aaf0, data root without synthetic data): an existing study resumes.
PINNED_PRESET_KEYS = {"paper": (284, "a9bc8d1c77790797"), "corrected": (284, "dd9432a2602218a1"),
                      "smoke": (8, "c100ecd31599e8f4")}


@pytest.mark.parametrize("preset", sorted(PINNED_PRESET_KEYS))
def test_presets_plan_the_same_keys_as_before_new_settings(preset, tmp_path) -> None:
    import hashlib

    spec = load_spec(preset=preset, storage=tmp_path / "study", data_root=tmp_path / "no-data")
    keys = sorted(t.key for t in expand(spec))
    assert (len(keys), hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16]) == PINNED_PRESET_KEYS[preset]


def test_networks_extended_and_all_in_a_spec(tmp_path) -> None:
    """`all` stays the paper's 14; `extended` is the modern set, also inside a list beside other names (on
    BAPPS's 64 px patches ViT and MaxViT need `resize: auto`, and say so)."""
    def networks(value, resize: str = "auto") -> list[str]:
        spec = load_spec(preset="smoke", storage=tmp_path / "s", data_root=tmp_path / "d",
                         overrides=[f"networks={value}", "points=[p4]", 'tasks={"similarity": {}}', f"resize={resize}"])
        return list(dict.fromkeys(t.config.network for t in expand(spec)))

    assert networks("all") == list(ln.REGISTRY)
    assert networks("extended") == list(ln.EXTENDED) and len(ln.EXTENDED) >= 12
    assert not set(ln.EXTENDED) & set(ln.REGISTRY)
    assert networks("[vgg16,extended,alexnet,vgg16]") == ["vgg16", *ln.EXTENDED, "alexnet"]
    with pytest.raises(UserError, match="tasks.similarity: vit_b_16 with weights random takes 224x224 px input only, not 64x64: "
                                          "pass --resize auto"):
        networks("extended", resize="off")
