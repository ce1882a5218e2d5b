"""Issue 16, the run and settings faults: one live process per run folder, a sweep whose runs end
with it, and every bad setting a one-line error (exit code 2) before any expensive work.  Each
test is named after the fault it prevents.  The process tests start real `ldl` processes and
stop only those they started (found by their own tmp folder in the command line)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ldl.cli import main
from ldl.config import load_config
from ldl.data import DATASETS
from ldl.train import run_training

EPOCHS = 8


def small(run_dir, *extra):
    """A run of a few seconds (most of it starting Python and torch)."""
    return ["data.image_size=32", "data.synthetic.num_train=200", "data.synthetic.num_val=50",
            "data.synthetic.num_test=50", "model.width=8", "model.stem=small", "optim.batch_size=64",
            f"optim.epochs={EPOCHS}", "log.wandb=disabled", "log.progress=false", f"run.dir={run_dir}", *extra]


def ldl(*args):
    return [sys.executable, "-m", "ldl.cli", *map(str, args)]


def epochs_recorded(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_lock(run_dir, pid, started=None):
    """A lock file as an owner on this host writes it (started: its /proc start time)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": started}))


def living(marker):
    """PIDs of live (non-zombie) processes whose command line mentions `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if proc.name.isdigit() and str(marker).encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def stray_processes(tmp_path):
    """Kills, after the test, any process still running from the test's folder."""
    yield
    for pid in living(tmp_path):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def live_process():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def refused(capsys, argv, *fragments):
    """`ldl argv` exits 2 with a single error line holding every fragment, and no traceback."""
    assert main(list(map(str, argv))) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and "\n" not in out and "Traceback" not in out, out
    assert all(fragment in out for fragment in fragments), out
    return out


# ---- fault 2: one live process per run folder ----

def test_second_process_on_a_run_folder_is_refused(tmp_path, stray_processes):
    run = tmp_path / "run"
    both = [subprocess.Popen(ldl("train", *small(run)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outcomes = sorted((proc.wait(timeout=120), proc.stdout.read()) for proc in both)
    (ok, _), (code, out) = outcomes
    assert (ok, code) == (0, 2), outcomes
    assert "is in use by process" in out and str(run) in out and "Traceback" not in out, out
    assert epochs_recorded(run) == list(range(1, EPOCHS + 1))
    assert not (run / ".lock").exists()


def test_resume_of_a_run_owned_by_a_live_process_is_refused(tmp_path, capsys, live_process):
    run = tmp_path / "run"
    run_training(load_config(None, small(run, "optim.epochs=1")))
    write_lock(run, live_process.pid)
    refused(capsys, ["train", "--resume", run], f"is in use by process {live_process.pid}")
    assert (run / ".lock").exists()   # the owner's lock is left alone


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock(run, dead.pid)
    with pytest.warns(UserWarning, match="stale lock"):
        run_training(load_config(None, small(run, "optim.epochs=1")))
    write_lock(run, os.getpid(), started="1")   # this PID, but a process started at another time: reused
    with pytest.warns(UserWarning, match="stale lock"):
        run_training(None, resume_dir=run)
    assert not (run / ".lock").exists()


# ---- fault 3: a sweep's runs end with it, and a rerun never races them ----

def sweep_file(tmp_path, seeds, *extra):
    overrides = [o for o in small("x", *extra) if not o.startswith("run.dir")]
    spec = {"method": "grid", "command": ["ldl", "train", *overrides, "${args_no_hyphens}"],
            "parameters": {"seed": {"values": seeds}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_sweep(tmp_path, seeds, *extra, workers=None):
    """A sweep of one run per seed, `workers` at a time (default all at once), in its own session;
    returned once every started run has finished its first epoch."""
    path, out = sweep_file(tmp_path, seeds, *extra), tmp_path / "sweep"
    workers = workers or len(seeds)
    proc = subprocess.Popen(ldl("sweep", path, "--out", out, "--workers", workers), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(list(out.glob("*/checkpoint.pt"))) == workers, 120, "every started run's first epoch")
    return proc, path, out


def test_killed_sweep_leaves_no_orphans_and_rerun_resumes_once(tmp_path, stray_processes):
    # Larger epochs, so that the run to write its first checkpoint last is still training when
    # killed; the other may have finished meanwhile (its process started first), and is then skipped.
    sweep, path, out = start_sweep(tmp_path, [0, 1], "data.synthetic.num_train=600")
    sweep.kill()
    sweep.wait()
    wait_until(lambda: not living(tmp_path), 20, "the killed sweep's runs to end")
    finished = {run.parent.name for run in out.glob("*/summary.json")}   # read once none can still write
    assert len(finished) < 2, "both runs finished before the kill: nothing was tested"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2"]) == 0
    for run in [d for d in out.iterdir() if d.is_dir()]:
        assert epochs_recorded(run) == list(range(1, EPOCHS + 1)), run
        resumes = len(json.loads((run / "meta.json").read_text())["resumed_at"])
        assert resumes == (0 if run.name in finished else 1), run


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_sweep_stops_its_runs_and_releases_their_folders(tmp_path, stray_processes, signum, code):
    sweep, _, out = start_sweep(tmp_path, [0, 1], workers=1)
    sweep.send_signal(signum)
    assert sweep.wait(timeout=30) == code
    wait_until(lambda: not living(tmp_path), 20, "the stopped sweep's runs to end")
    assert not list(out.glob("*/.lock"))
    # the run still queued was never started: no log, no folder
    assert len(list(out.glob("*.log"))) == 1 and len([d for d in out.iterdir() if d.is_dir()]) == 1


def test_sweep_leaves_a_folder_owned_by_a_live_process_alone(tmp_path, live_process):
    from ldl.sweep import expand, load_sweep, run_local
    path, out = sweep_file(tmp_path, [0]), tmp_path / "sweep"
    run = out / expand(load_sweep(path))[0].run_id
    write_lock(run, live_process.pid)
    (run / "checkpoint.pt").write_bytes(b"being written by its owner")
    status = run_local(load_sweep(path), out, workers=1, progress=False)
    assert [s["state"] for s in status.values()] == ["running elsewhere"]
    assert str(live_process.pid) in next(iter(status.values()))["owner"]
    assert not list(out.glob("*.log"))   # nothing was started on it
    assert (run / "checkpoint.pt").read_bytes() == b"being written by its owner"


# ---- fault 6: degenerate settings never give a "finished" untrained run ----

@pytest.mark.parametrize("epochs", [0, -1])
def test_zero_or_negative_epochs_is_an_error(tmp_path, capsys, epochs):
    refused(capsys, ["train", *small(tmp_path / "run", f"optim.epochs={epochs}")],
            f"optim.epochs must be at least 1, got {epochs}")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_training_set_is_an_error(tmp_path, capsys):
    refused(capsys, ["train", *small(tmp_path / "run", "optim.batch_size=500")],
            "optim.batch_size=500 is larger than the training set (200 samples)")
    assert not (tmp_path / "run").exists()


# ---- fault 7: data.num_classes ----

@pytest.mark.parametrize("classes", [5, 9])
def test_num_classes_other_than_7_or_8_is_an_error(tmp_path, capsys, classes):
    refused(capsys, ["train", *small(tmp_path / "run", f"data.num_classes={classes}")],
            "data.num_classes must be 7 or 8", f"got {classes}")


def test_num_classes_is_checked_against_the_dataset(tmp_path, capsys, monkeypatch):
    """A dataset that ignores the protocol (8 classes when 7 are asked) stops before training."""
    def eight_classes(cfg, split):
        return DATASETS["synthetic"](OmegaConf.merge(cfg, {"data": {"num_classes": 8}}), split)
    monkeypatch.setitem(DATASETS, "eight_only", eight_classes)
    refused(capsys, ["train", *small(tmp_path / "run", "data.name=eight_only", "data.num_classes=7")],
            "data.num_classes=7 but the eight_only train split has 8 classes")


# ---- fault 8: one line, exit code 2, no traceback ----

def read_only_folder(tmp_path):
    """A folder this process cannot create entries in: mode 0o555, or for root (who ignores
    modes) sysfs, which refuses new entries."""
    folder = Path("/sys/kernel") if os.geteuid() == 0 else tmp_path / "read-only"
    if folder != Path("/sys/kernel"):
        folder.mkdir()
        folder.chmod(0o555)
    try:
        (folder / "probe").mkdir()
    except OSError:
        return folder
    (folder / "probe").rmdir()
    pytest.skip(f"no read-only folder available here ({folder} is writable)")


def test_read_only_run_root_is_an_error_before_the_data_build(tmp_path, capsys):
    root, cache = read_only_folder(tmp_path), tmp_path / "cache"
    args = [a for a in small("x") if not a.startswith("run.dir")]
    refused(capsys, ["train", *args, f"run.root={root}", f"data.cache_dir={cache}"],
            f"cannot write the run folder {root}/")
    assert not list(cache.iterdir())   # nothing was built


def test_unwritable_cache_dir_is_an_error(tmp_path, capsys):
    cache = read_only_folder(tmp_path) / "cache"
    refused(capsys, ["train", *small(tmp_path / "run", f"data.cache_dir={cache}")],
            f"cannot write the data cache folder (data.cache_dir or $LDL_CACHE) {cache}")


def test_eval_every_zero_is_an_error(tmp_path, capsys):
    refused(capsys, ["train", *small(tmp_path / "run", "eval.every=0")], "eval.every must be at least 1, got 0")


def test_unknown_eval_split_is_an_error(tmp_path, capsys):
    refused(capsys, ["train", *small(tmp_path / "run", "eval.splits=[val,train2]")],
            "eval.splits: unknown split 'train2' (known: train, val, test)")


@pytest.mark.parametrize("base", ["5", "[base.yaml, 5]"])
def test_base_that_is_not_a_path_is_an_error(tmp_path, capsys, base):
    (tmp_path / "base.yaml").write_text("seed: 1\n")
    config = tmp_path / "bad.yaml"
    config.write_text(f"_base_: {base}\n")
    refused(capsys, ["train", "-c", config], f"{config}: _base_ must be a path or a list of paths")


@pytest.fixture(scope="module")
def rul_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("rul") / "run"
    run_training(load_config(None, small(run, "optim.epochs=1", "method.name=rul")))
    return run / "checkpoint.pt"


@pytest.mark.parametrize("override, message", [
    ("model.arch=resnet50", "model.arch=resnet50 contradicts the checkpoint {ckpt}, trained with model.arch=resnet18"),
    ("method.name=ce", "method.name=ce contradicts the checkpoint {ckpt}, trained with method.name=rul"),
    ("method.rul.embed_dim=32", "the checkpoint does not fit the resnet18 / rul model built from its config"),
])
def test_eval_with_a_model_or_method_the_checkpoint_was_not_trained_with_is_an_error(
        capsys, rul_checkpoint, override, message):
    refused(capsys, ["eval", rul_checkpoint, override], message.format(ckpt=rul_checkpoint))
