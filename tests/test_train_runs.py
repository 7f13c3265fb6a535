"""What a preempted, requeued or multi-process user does with recipes/train.py: kills at every checkpoint file,
resumes, reruns, extensions, overwrites, damaged or planted checkpoint files, and two processes against one."""

from __future__ import annotations

import json
import os
import pickle
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_recipe import QUICKSTART, ROOT, TRAIN, _write_pairs, run_train, small_run

from sam_peft.training import CheckpointError, load_trained
from sam_peft.training.state import MANIFEST_FILE, _sha256

KILLED_TRAIN = Path(__file__).with_name("killed_train.py")
# One process and two on the same global batch differ by float rounding only (1.2e-7 measured); a learning rate
# off by one step of the schedule moves the weights by about 1e-3.
TWO_PROCESS_ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted small run (2 epochs of 2 steps), checkpointed at every step; `events.txt` lists its
    file-system events in order (see killed_train.py)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    finished = run_killed(small_run(tmp_path, "run", "--checkpoint_every_steps", "1"), log=tmp_path / "events.txt")
    assert finished.returncode == 0, output(finished)[-3000:]
    return tmp_path


@pytest.fixture(scope="module")
def stopped_run(reference, tmp_path_factory):
    """A run stopped by max_steps after its first epoch: checkpoint_2 only."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    copy_base(reference, tmp_path)
    run_train(small_run(tmp_path, "run", "--max_steps", "2"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint_2"]
    return tmp_path


@pytest.fixture(scope="module")
def train_main():
    """recipes/train.py's main(), to run in this process (for invocations that stop before training)."""
    return runpy.run_path(str(TRAIN))["main"]


def train_here(train_main, monkeypatch, args: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [str(TRAIN), *args])
    train_main()


def copied_run(origin: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Copies the run folder of `origin` into `tmp_path`; returns the arguments of the same run there (its base
    model stays where the run recorded it)."""
    shutil.copytree(origin / "run", tmp_path / "run")
    return small_run(tmp_path, "run", *extra, "--base_model", str(origin / "base"))


def copy_base(reference: Path, tmp_path: Path) -> None:
    shutil.copytree(reference / "base", tmp_path / "base")


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter_model.safetensors")


def assert_same_adapter(run_dir: Path, reference_dir: Path, atol: float = 1e-6) -> None:
    expected, got = adapter(reference_dir), adapter(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_killed(args: list[str], kill_at: str | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "KILL_AT": kill_at or ""}
    if log is not None:
        env["KILL_LOG"] = str(log)
    command = [sys.executable, str(KILLED_TRAIN), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


# Kills and resumes


def test_a_kill_at_any_checkpoint_file_resumes_to_the_uninterrupted_result(reference, tmp_path):
    """One run killed at each file-system event of writing checkpoint_3 (and removing checkpoint_1), of
    checkpoint_4 and of the results, each time resumed with the same command: the result equals the run that was
    never killed, and no checkpoint survives incomplete or damaged."""
    copy_base(reference, tmp_path)
    args = small_run(tmp_path, "run", "--checkpoint_every_steps", "1", "--resume_from_checkpoint", "latest")
    events = (reference / "events.txt").read_text().splitlines()
    start = next(i for i, e in enumerate(events) if "checkpoint_3" in e)
    third = events[start : next(i for i, e in enumerate(events) if "checkpoint_4" in e)]  # saving checkpoint_3
    assert third[0] == "write checkpoints/.tmp-checkpoint_3/adapter_model.safetensors"
    written = {e.rsplit("/", 1)[-1] for e in third if e.startswith("write")}
    assert written == {"adapter_model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} | {
        "trainer_state.json",
        MANIFEST_FILE,
    }
    # the rename into place, then the removal of checkpoint_1 (renamed aside, then deleted)
    assert third[-3:] == [
        "replace checkpoints/checkpoint_3",
        "replace checkpoints/.tmp-old-checkpoint_1",
        "remove checkpoints/.tmp-old-checkpoint_1",
    ]
    results = events[events.index("write .tmp-results/adapter_model.safetensors") :]
    assert results[-2:] == ["write sam_peft_run.json", "replace sam_peft_run.json"]
    # a kill while a tensor file and the manifest are written (every file: test_every_partial_checkpoint_...),
    # before the rename; while the oldest checkpoint is removed; while the results are moved into place; while the
    # run file (that says "finished") is written
    kill_points = [
        "write checkpoints/.tmp-checkpoint_3/optimizer.bin",
        f"write checkpoints/.tmp-checkpoint_3/{MANIFEST_FILE}",
        *third[-3:],
        results[len(results) // 2],
        "write sam_peft_run.json",
    ]
    for kill_at in kill_points:
        killed = run_killed(args, kill_at)
        assert killed.returncode == 137, f"{kill_at}: {output(killed)[-3000:]}"
        checkpoints = tmp_path / "run" / "checkpoints"
        names = sorted(p.name for p in checkpoints.iterdir())
        assert "checkpoint_2" in names or "checkpoint_3" in names, (kill_at, names)
    finished = run_killed(args)
    assert finished.returncode == 0, output(finished)[-3000:]
    assert_same_adapter(tmp_path / "run", reference / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = json.loads((reference / "run" / "metrics.json").read_text())
    assert [e["lr"] for e in metrics["train_log"]] == [e["lr"] for e in expected["train_log"]]
    assert metrics["iou"] == pytest.approx(expected["iou"], abs=1e-6)
    # rotation kept the two newest complete checkpoints; nothing incomplete is left
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint_3", "checkpoint_4"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".tmp-")]


def test_explicit_resume_from_an_older_checkpoint_keeps_it_until_newer_ones_are_complete(
    reference, stopped_run, tmp_path
):
    """A partial newest checkpoint (a kill while writing in place) is skipped by `latest`; resuming explicitly
    from the older good one trains on without deleting it early and without "already exists"."""
    args = copied_run(stopped_run, tmp_path)
    checkpoints = tmp_path / "run" / "checkpoints"
    partial = checkpoints / "checkpoint_9"
    shutil.copytree(checkpoints / "checkpoint_2", partial)
    (partial / MANIFEST_FILE).unlink()
    (partial / "optimizer.bin").write_bytes(b"")
    resumed = run_train([*args, "--resume_from_checkpoint", str(checkpoints / "checkpoint_2")])
    assert f"Skipping incomplete checkpoint {partial}" in output(resumed)
    assert "at step 2 (epoch 1)" in output(resumed)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4", "checkpoint_9"]
    assert_same_adapter(tmp_path / "run", reference / "run")


def test_every_partial_checkpoint_is_skipped_reported_and_cleaned(reference, stopped_run, tmp_path):
    """For each file of a checkpoint, the folder a kill while writing it leaves (the files before it, it cut in
    half): `latest` is the older complete checkpoint, the partial one is reported, then removed as a leftover."""
    from sam_peft.training import CheckpointFolder, RunPlan, claim_output_dir

    complete = reference / "run" / "checkpoints" / "checkpoint_4"
    names = [e.rsplit("/", 1)[-1] for e in (reference / "events.txt").read_text().splitlines()]
    order = [n for n in dict.fromkeys(names) if (complete / n).is_file() or n == "adapter_model.safetensors"]
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json", MANIFEST_FILE} <= set(order)
    for index, name in enumerate(order):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        shutil.copytree(stopped_run / "run", tmp_path / "run")
        partial = tmp_path / "run" / "checkpoints" / ".tmp-checkpoint_4"
        partial.mkdir()
        for earlier in order[:index]:
            shutil.copy(complete / earlier, partial / earlier)
        data = (complete / name).read_bytes()
        (partial / name).write_bytes(data[: len(data) // 2])
        folder = CheckpointFolder(tmp_path / "run")
        assert folder.latest() == tmp_path / "run" / "checkpoints" / "checkpoint_2", name
        assert folder.incomplete() == [partial]
        notes = claim_output_dir(
            tmp_path / "run", json.loads((tmp_path / "run" / "training_config.json").read_text()), RunPlan()
        )
        assert notes == [f"Removed {partial}, left by an interrupted run."] and not partial.exists()


def test_a_damaged_checkpoint_file_is_named_never_skipped(stopped_run, tmp_path, train_main, monkeypatch):
    args = copied_run(stopped_run, tmp_path, "--resume_from_checkpoint", "latest")
    random_states = tmp_path / "run" / "checkpoints" / "checkpoint_2" / "random_states_0.pkl"
    data = bytearray(random_states.read_bytes())
    data[len(data) // 2] ^= 0xFF
    random_states.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"Checkpoint file {random_states} is damaged"):
        train_here(train_main, monkeypatch, args)


def test_resume_unpickles_nothing_but_tensors(stopped_run, tmp_path, train_main, monkeypatch):
    """A pickle that runs code, planted in a checkpoint with a consistent manifest, is refused and never runs."""
    args = copied_run(stopped_run, tmp_path, "--resume_from_checkpoint", "latest")
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint_2"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    manifest_text = (checkpoint / MANIFEST_FILE).read_text()
    for name in ("optimizer.bin", "random_states_0.pkl"):
        original = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(pickle.dumps(Payload()))
        manifest = json.loads(manifest_text)
        manifest["files"][name] = {"size": (checkpoint / name).stat().st_size, "sha256": _sha256(checkpoint / name)}
        (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match=f"(?s)Cannot resume from {checkpoint}.*Weights only load failed"):
            train_here(train_main, monkeypatch, args)
        assert not marker.exists(), name
        (checkpoint / name).write_bytes(original)
        (checkpoint / MANIFEST_FILE).write_text(manifest_text)
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # the loop state is JSON
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2


# Reruns of a requeued job


def test_the_same_command_on_a_finished_run_exits_cleanly_and_keeps_everything(
    reference, tmp_path, train_main, monkeypatch, capsys
):
    args = copied_run(reference, tmp_path, "--checkpoint_every_steps", "1")
    before = tree(tmp_path / "run")
    for extra in ((), ("--resume_from_checkpoint", "latest")):
        train_here(train_main, monkeypatch, [*args, *extra])
        assert "finished after 2 epochs (4 steps): nothing to do" in capsys.readouterr().out
        assert tree(tmp_path / "run") == before


def test_a_finished_run_is_extended_with_more_epochs(reference, tmp_path, train_main, monkeypatch):
    args = copied_run(reference, tmp_path, "--checkpoint_every_steps", "1", "--num_epochs", "3")
    with pytest.raises(ValueError, match="to train it to 3 epochs pass --resume_from_checkpoint latest"):
        train_here(train_main, monkeypatch, args)
    extended = run_train([*args, "--resume_from_checkpoint", "latest"])
    assert "at step 4 (epoch 2)" in output(extended)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    first = json.loads((reference / "run" / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train_log"]] == [1, 2, 3, 4, 5, 6]
    assert metrics["train_log"][:4] == first["train_log"]
    record = json.loads((tmp_path / "run" / "sam_peft_run.json").read_text())
    assert record["training"] == {"epochs": 3, "steps": 6}


def test_a_run_that_fails_validation_leaves_nothing_and_the_corrected_command_runs(reference, tmp_path):
    """Command-line data replaces the YAML's generated data; a typo in mask_dir fails before anything is written.
    The run, made with paths relative to its own working directory, loads from any other."""
    copy_base(reference, tmp_path)
    _write_pairs(tmp_path / "images", tmp_path / "masks", 10, np.random.default_rng(0))
    args = small_run(Path("."), "run", "--image_dir", "images", "--num_epochs", "1")
    failed = run_train([*args, "--mask_dir", "mask"], check=False, cwd=tmp_path)
    assert failed.returncode != 0 and "mask" in failed.stderr.splitlines()[-1]
    assert not (tmp_path / "run").exists()
    run_train([*args, "--mask_dir", "masks"], cwd=tmp_path)
    run_dir = tmp_path / "run"
    recorded = json.loads((run_dir / "training_config.json").read_text())
    assert recorded["data"]["benchmark"] is None and recorded["data"]["image_dir"] == "images"
    # recorded absolutely: the run file, the adapter config and the card's snippet work from anywhere
    base = str(tmp_path / "base")
    assert json.loads((run_dir / "sam_peft_run.json").read_text())["model"]["base_model"] == base
    assert json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    card = (run_dir / "README.md").read_text()
    assert f'from_pretrained("{base}"' in card and f'PeftModel.from_pretrained(base, "{run_dir}")' in card
    assert Path.cwd() != tmp_path
    model = load_trained(run_dir)
    assert model.config.num_labels == 1


def test_a_relative_base_model_is_found_beside_the_run(reference, tmp_path):
    """A run folder that records its base model relatively (as earlier versions did) loads from another working
    directory when the base model lies beside it."""
    shutil.copytree(reference / "run", tmp_path / "run")
    shutil.copytree(reference / "base", tmp_path / "run" / "base-sam")
    record = json.loads((tmp_path / "run" / "sam_peft_run.json").read_text())
    record["model"]["base_model"] = "base-sam"
    (tmp_path / "run" / "sam_peft_run.json").write_text(json.dumps(record))
    assert not Path("base-sam").exists()
    pixel_values = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        got = load_trained(tmp_path / "run")(pixel_values=pixel_values).logits
        expected = load_trained(reference / "run")(pixel_values=pixel_values).logits
    torch.testing.assert_close(got, expected)


def test_push_to_hub_is_checked_before_training(reference, tmp_path, train_main, monkeypatch):
    copy_base(reference, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = small_run(tmp_path, "run", "--push_to_hub", "true", "--hub_model_id", "someone/sam-test")
    with pytest.raises(ValueError, match="push_to_hub needs the Hub but HF_HUB_OFFLINE is set"):
        train_here(train_main, monkeypatch, args)
    assert not (tmp_path / "run").exists()


# Overwriting


def test_overwrite_never_deletes_what_a_run_did_not_write(reference, tmp_path, train_main, monkeypatch):
    copy_base(reference, tmp_path)
    user_folder = tmp_path / "photos"
    user_folder.mkdir()
    for index in range(3):
        (user_folder / f"img_{index}.jpg").write_bytes(b"\xff\xd8 user data")
    before = tree(user_folder)
    args = [str(QUICKSTART), "--base_model", str(tmp_path / "base"), "--output_dir", str(user_folder)]
    with pytest.raises(ValueError, match=r"holds no sam-peft run \(found \['img_0.jpg', 'img_1.jpg', 'img_2.jpg'\]\)"):
        train_here(train_main, monkeypatch, [*args, "--overwrite_output_dir", "true"])
    assert tree(user_folder) == before
    # a run folder with a file of the user's beside it
    args = copied_run(reference, tmp_path, "--overwrite_output_dir", "true")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    before = tree(tmp_path / "run")
    with pytest.raises(ValueError, match=r"holds files that no sam-peft run wrote \(\['notes.txt'\]\)"):
        train_here(train_main, monkeypatch, args)
    assert tree(tmp_path / "run") == before


def test_overwrite_with_resume_is_refused_and_deletes_nothing(reference, tmp_path, train_main, monkeypatch):
    args = copied_run(reference, tmp_path, "--overwrite_output_dir", "true", "--resume_from_checkpoint", "latest")
    before = tree(tmp_path / "run")
    with pytest.raises(ValueError, match="would delete the checkpoint that --resume_from_checkpoint resumes from"):
        train_here(train_main, monkeypatch, args)
    assert tree(tmp_path / "run") == before


# Several processes


@pytest.mark.slow
def test_two_processes_follow_the_schedule_of_one(reference, tmp_path):
    """The same global batch (4) on one process and on two (2 each): the same learning rate at every optimiser
    step and the same adapter (LoRA: nothing random differs, the flips being a function of seed, epoch and
    sample)."""
    copy_base(reference, tmp_path)
    common = ("--method", "lora", "--eval_batch_size", "2", "--lr_schedule", "polynomial")
    run_train(small_run(tmp_path, "one", *common, "--batch_size", "4"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        run_train(small_run(tmp_path, "two", *common, "--batch_size", "2"), launcher=launcher)
    finally:
        del os.environ["ACCELERATE_USE_CPU"]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [e["step"] for e in two["train_log"]] == [1, 2, 3, 4]
    assert [e["lr"] for e in two["train_log"]] == [e["lr"] for e in one["train_log"]]
    assert two["untrained"]["iou"] == pytest.approx(one["untrained"]["iou"], abs=1e-6)  # same images, once
    assert_same_adapter(tmp_path / "two", tmp_path / "one", atol=TWO_PROCESS_ATOL)


def test_seeded_samples_draw_per_seed_epoch_and_index_only():
    """Augmentation draws depend on (seed, epoch, index), not on the global generator, which they leave as it was."""
    from sam_peft.training import SeededSamples

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.rand(4)

    samples = SeededSamples(Draws(), seed=7)
    first = [samples[i] for i in range(3)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert all(torch.equal(samples[i], first[i]) for i in (2, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first[0], first[1])
    samples.set_epoch(1)
    assert not any(torch.equal(samples[i], first[i]) for i in range(3))
    assert not torch.equal(SeededSamples(Draws(), seed=8)[0], first[0])
