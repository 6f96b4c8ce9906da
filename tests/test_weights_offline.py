"""The ImageNet-weights path end to end, offline: torchvision's own cache file in, exactly it loaded.

A seeded state dict is put in `$TORCH_HOME/hub/checkpoints/` the way torchvision names its files,
`<name>-<first 8 hex digits of its sha256>.pth`, and the weight set's URL is pointed at that name (a seeded
file cannot carry the real file's hash, which the loader checks). Then the real code path runs:
`torch.hub.load_state_dict_from_url` finds the file and reads it, tensors only. The suite's network guard
(tests/conftest.py) fails any test that would download instead. A cached file that is not what its name
says, and a cached pickle that would run code, are refused in one line.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pathlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from study.cli import EXIT_USER_ERROR, main
from trainables import loss_networks as ln


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny inputs: one thread is as fast, and on a busy 2-core machine two OpenMP threads waiting on each
    other make a small forward 10-30x slower (efficientnet_b7 at 32 px: 0.2 s vs 6 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private torch hub cache (torch reads TORCH_HOME on every call)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert tmp_path in hub.parents
    hub.mkdir(parents=True)
    return hub


def seeded_state(name: str, seed: int, **build: object) -> dict[str, torch.Tensor]:
    """A full state dict for `name` (keys and shapes from torchvision's builder) with seeded values that
    no initialiser produces: conv/linear N(0, 2/fan_in), norm weights U(0.5, 1.5), biases and running
    means N(0, 0.1), running variances U(0.5, 2)."""
    with torch.device("meta"):
        layout = torchvision.models.get_model(name, weights=None, **build).state_dict()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in layout.items():
        if not t.is_floating_point():
            state[key] = torch.tensor(seed + 100, dtype=t.dtype)  # num_batches_tracked
        elif key.endswith("running_var"):
            state[key] = torch.empty(t.shape).uniform_(0.5, 2.0, generator=g)
        elif t.dim() >= 2:
            state[key] = torch.randn(t.shape, generator=g) * math.sqrt(2 / math.prod(t.shape[1:]))
        elif key.endswith("weight"):
            state[key] = torch.empty(t.shape).uniform_(0.5, 1.5, generator=g)
        else:
            state[key] = torch.randn(t.shape, generator=g) * 0.1
    return state


def put_in_cache(hub: Path, name: str, weights: str, state: dict[str, torch.Tensor],
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """Save `state` where torchvision looks for `name`'s `weights` under the name it would give the file,
    `<name>-<sha256 prefix>.pth`, and point the weight set's URL at that name."""
    return put_bytes_in_cache(hub, name, weights, _saved(state), monkeypatch)


def urls_for_child_processes(entries: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The URLs `put_in_cache` patched, for `dpl` run as a subprocess and its Ray workers too: the toy task
    (tests/plugins/toy_task.py), which they import before a trial builds its network, sets each (network,
    weight set) URL named in $DPL_TEST_WEIGHT_URLS (a test-only hook: the product has none)."""
    urls = {f"{name}/{weights}": torchvision.models.get_model_weights(name)[weights].url for name, weights in entries}
    monkeypatch.setenv("DPL_TEST_WEIGHT_URLS", json.dumps(urls))


def put_bytes_in_cache(hub: Path, name: str, weights: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    entry = torchvision.models.get_model_weights(name)[weights]
    base, real_name = entry.url.rsplit("/", 1)
    path = hub / f"{real_name.rsplit('-', 1)[0]}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    path.write_bytes(data)
    monkeypatch.setattr(entry.value, "url", f"{base}/{path.name}")
    return path


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_holds_exactly(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of `model` is the saved one, bit for bit (and none is left on the meta device)."""
    got = model.state_dict()
    assert set(got) == set(state)
    for key, saved in state.items():
        assert not got[key].is_meta, f"{key} was never loaded (still on the meta device)"
        same = got[key].dtype == saved.dtype and torch.equal(got[key], saved)
        assert same, f"{key} is not the tensor saved in the cache file"


def test_imagenet_and_named_weight_sets_load_exactly_the_cached_files(checkpoints: Path, monkeypatch) -> None:
    """`imagenet` is the paper's IMAGENET1K_V1 even where torchvision's DEFAULT is V2 (resnet50); each
    name loads its own file, untouched."""
    v1, v2 = seeded_state("resnet50", 1), seeded_state("resnet50", 2)
    put_in_cache(checkpoints, "resnet50", "IMAGENET1K_V1", v1, monkeypatch)
    put_in_cache(checkpoints, "resnet50", "IMAGENET1K_V2", v2, monkeypatch)
    assert_holds_exactly(ln.build_classifier("resnet50", "imagenet"), v1)
    assert_holds_exactly(ln.build_classifier("resnet50", "IMAGENET1K_V2"), v2)
    net = ln.build_loss_network("resnet50", ["layer1"], weights="imagenet", fold_batchnorm=False)
    body = dict(net.body.named_parameters()) | dict(net.body.named_buffers())
    differ = [k for k, t in body.items() if not torch.equal(t, v1[k])]
    assert len(body) > 20 and not differ, differ[:3]
    assert torch.equal(body["layer1.2.bn3.running_var"], v1["layer1.2.bn3.running_var"])


def test_cli_weights_flag_uses_the_cached_file(checkpoints: Path, photos: dict[str, Path], capsys, monkeypatch) -> None:
    """`--weights imagenet` gives exactly what the cached file given as a path gives; V2 does not."""
    v1 = put_in_cache(checkpoints, "resnet50", "IMAGENET1K_V1", seeded_state("resnet50", 1), monkeypatch)
    put_in_cache(checkpoints, "resnet50", "IMAGENET1K_V2", seeded_state("resnet50", 2), monkeypatch)

    def distance(weights: str) -> float:
        argv = ["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "resnet50",
                "--layer", "layer1", "--distance", "mse", "--weights", weights, "--json"]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)["total"]

    imagenet, from_file, v2 = distance("imagenet"), distance(str(v1)), distance("IMAGENET1K_V2")
    assert imagenet == from_file and imagenet > 0
    assert abs(v2 - imagenet) > 1e-3 * imagenet


def run_points(model: nn.Module, points: tuple[str, ...], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the modules named `points`, taken with forward hooks on the whole model."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[p].register_forward_hook(lambda m, i, o, p=p: out.__setitem__(p, o.clone())) for p in points]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    assert scale > 1e-2, "reference activations are ~0: the comparison would say nothing"
    return (ours - ref).abs().max().item() / scale


@pytest.mark.parametrize("name", ln.TRANSFORM_INPUT_NETWORKS)
def test_transform_input_auto_is_what_torchvision_does_with_its_weights(name: str, checkpoints: Path,
                                                                       monkeypatch) -> None:
    """torchvision's own builder with these weights reads the same cache file and turns transform_input
    on; `auto` must give its features at all 4 points, `off` those of the model with it turned off."""
    # torchvision's files hold the auxiliary heads too (its builder loads them, then drops them)
    state = seeded_state(name, 3, aux_logits=True, init_weights=False)
    put_in_cache(checkpoints, name, "IMAGENET1K_V1", state, monkeypatch)
    reference = torchvision.models.get_model(name, weights="IMAGENET1K_V1").eval()
    assert reference.transform_input is True
    points = ln.REGISTRY[name].points
    size = ln.min_size(name)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    theirs_on = run_points(reference, points, x)
    reference.transform_input = False
    theirs_off = run_points(reference, points, x)

    classifier = ln.build_classifier(name, "imagenet")
    assert_holds_exactly(classifier, {k: v for k, v in state.items() if not k.startswith(("aux", "AuxLogits"))})
    auto = ln.build_loss_network(name, "all", weights="imagenet", normalisation="none")
    off = ln.build_loss_network(name, "all", weights="imagenet", normalisation="none", transform_input="off")
    with torch.no_grad():
        ours_auto, ours_off = auto(x), off(x)
    for p in points:
        assert relative_error(ours_auto[p], theirs_on[p]) < 1e-4, p
        assert relative_error(ours_off[p], theirs_off[p]) < 1e-4, p
        assert relative_error(ours_off[p], theirs_on[p]) > 1e-2, p  # the setting really changes the input
    assert ln.uses_transform_input(name, "IMAGENET1K_V1", "auto") is True
    assert ln.uses_transform_input(name, "random", "auto") is False
    assert ln.uses_transform_input(name, str(checkpoints / "own.pth"), "auto") is False  # a file: as the reference


def test_offline_with_empty_cache_is_one_actionable_line(
    checkpoints: Path, photos: dict[str, Path], network_guard, capsys
) -> None:
    """No file in the cache and no network: `dpl` says in one line which file to put where (or to use
    random weights), exits non-zero, and does not hang. The download really is attempted: the guard sees it."""
    start = time.monotonic()
    with network_guard.expected() as tried:
        rc = main(["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "squeezenet1_1",
                   "--layer", "features.1", "--weights", "imagenet"])
    assert time.monotonic() - start < 30
    assert rc == EXIT_USER_ERROR
    assert any("download.pytorch.org" in t for t in tried)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    fname = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert err.startswith("dpl: error: cannot get ImageNet weights squeezenet1_1.IMAGENET1K_V1")
    assert f"put {fname} " in err and str(checkpoints) in err and "TORCH_HOME" in err and "--weights random" in err
    assert not list(checkpoints.iterdir())  # no partial file that the next run would take for the weights


def distance_with_imagenet_weights(photos: dict[str, Path], capsys) -> tuple[int, str]:
    """`dpl distance` with squeezenet1_1's ImageNet weights: (exit code, stderr stripped)."""
    rc = main(["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "squeezenet1_1",
               "--layer", "features.1"])
    return rc, capsys.readouterr().err.strip()


def test_a_cached_file_that_is_not_what_its_name_says_is_refused(checkpoints: Path, photos, capsys) -> None:
    """A complete, loadable state dict under torchvision's real file name, whose sha256 does not start with
    the prefix in that name (torch checks it only when it downloads): refused in one line, not loaded as
    ImageNet weights; the same file given as a path is the user's own and loads."""
    real_name = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    path = checkpoints / real_name
    path.write_bytes(_saved(seeded_state("squeezenet1_1", 6)))
    rc, err = distance_with_imagenet_weights(photos, capsys)
    assert rc == EXIT_USER_ERROR and "\n" not in err
    assert err.startswith(f"dpl: error: cached ImageNet weights {path} are not the file published at")
    assert f"its name says {real_name.rsplit('-', 1)[1].split('.')[0]}" in err and "--weights PATH" in err
    assert main(["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "squeezenet1_1",
                 "--layer", "features.1", "--weights", str(path)]) == 0


class WritesMarker:
    """Unpickling this (what `torch.load(weights_only=False)` does) writes a file: code from the cache ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "code from the cache ran")


@pytest.mark.parametrize("named", ["with_its_own_hash", "as_the_real_file"])
def test_a_cached_pickle_never_runs(named: str, checkpoints: Path, photos, capsys, monkeypatch, tmp_path) -> None:
    """A pickle in the cache that runs code when unpickled: nothing of it runs, and the user gets one line.
    Under a name carrying its own hash, only loading tensors-only stops it; under the real file's name, the
    hash check refuses it before it is opened as a pickle."""
    marker = tmp_path / "marker"
    data = _saved({"features.0.weight": torch.zeros(1), "payload": WritesMarker(marker)})
    check = tmp_path / "check.pth"  # the payload is live: unpickled without weights_only it writes its file
    check.write_bytes(_saved({"payload": WritesMarker(tmp_path / "live")}))
    torch.load(check, weights_only=False)
    assert (tmp_path / "live").read_text() == "code from the cache ran"

    if named == "with_its_own_hash":
        path = put_bytes_in_cache(checkpoints, "squeezenet1_1", "IMAGENET1K_V1", data, monkeypatch)
        expected = f"dpl: error: cached ImageNet weights {path} cannot be read (UnpicklingError: Weights only load"
    else:
        path = checkpoints / torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
        path.write_bytes(data)
        expected = f"dpl: error: cached ImageNet weights {path} are not the file published at"
    rc, err = distance_with_imagenet_weights(photos, capsys)
    assert not marker.exists(), "unpickling the cached file ran its code"
    assert rc == EXIT_USER_ERROR and "\n" not in err and err.startswith(expected), err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_cached_file_is_one_line_naming_it(
    damage: str, checkpoints: Path, photos: dict[str, Path], capsys, monkeypatch
) -> None:
    """A broken file in the cache (a hand-copied, incomplete download) is named, with how to fix it, and
    not reported as "offline"; nothing tries the network (the file is there). Garbage named by its own
    hash gets past the hash check and cannot be read; a truncated file no longer has the hash its name says."""
    if damage == "garbage":
        path = put_bytes_in_cache(checkpoints, "squeezenet1_1", "IMAGENET1K_V1", b"not a checkpoint", monkeypatch)
        problem = "cannot be read"
    else:
        path = put_in_cache(checkpoints, "squeezenet1_1", "IMAGENET1K_V1", seeded_state("squeezenet1_1", 5),
                            monkeypatch)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        problem = "are not the file published at"
    rc, err = distance_with_imagenet_weights(photos, capsys)
    assert rc == EXIT_USER_ERROR
    assert "\n" not in err and err.startswith(f"dpl: error: cached ImageNet weights {path} {problem}")
    assert "delete it" in err and "offline" not in err
