"""Issue 22 without a cluster: a sweep through submitit's local and debug executors (the code path of
`--executor slurm`), a run preempted after its first checkpoint and requeued, `--status` for both
executors, a 2-process gloo run started as srun starts it (environment variables only), and the
rendezvous and run-folder lock under SLURM's variables."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from ldl.cli import main
from ldl.executors import slurm_options
from ldl.lifeline import deferred_signal, run_deferred
from ldl.rendezvous import first_host, from_slurm, from_submitit, port_for
from ldl.runlock import RunLock, RunLockedError, live_owner, read_owner
from ldl.sweep import SweepError, expand, load_sweep
from test_reliability_run import epochs_recorded, living, small, wait_until, write_lock

pytest.importorskip("submitit")

EPOCHS = 12   # enough epochs at ~0.1 s each that the preemption lands mid-run
TIMINGS = ("epoch_time", "train_images_per_s", "eval_time")
SLURM_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_PROCID",
              "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT", "SLURM_STEP_NODELIST",
              "SLURM_STEP_ID")


def sweep_file(path, epochs, method="slm_aea"):
    """A sweep of one run per value of optim.epochs (0: a run that fails) of a method with
    per-sample state, with a slurm: block as a cluster sweep has one."""
    overrides = [o for o in small("x", f"method.name={method}") if not o.startswith(("run.dir", "optim.epochs"))]
    spec = {"method": "grid", "command": ["ldl", "train", *overrides, "${args_no_hyphens}"],
            "slurm": {"time": "00:30:00", "cpus": 1}, "parameters": {"optim.epochs": {"values": epochs}}}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_ids(path):
    return [run.run_id for run in expand(load_sweep(path))]


def sweep(*args):
    return main(["sweep", *map(str, args)])


def status(capsys, path, out):
    capsys.readouterr()
    assert sweep(path, "--out", out, "--status") == 0
    return capsys.readouterr().out


def numbers(run_dir):
    """Every per-epoch record but the wall-clock timings, the final metrics and the per-sample export."""
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    return history, final, (run_dir / "samples.csv").read_text()


def preempt_after_first_checkpoint(run_dir):
    """SIGUSR2, which SLURM sends (as submitit asks) before preempting a job or at its time limit,
    to the run's process once it has saved its first checkpoint.  The process is stopped while the
    signal is sent, so that the signal lands mid-run."""
    wait_until(lambda: (run_dir / "checkpoint.pt").is_file(), 180, "the run's first checkpoint")
    pid = read_owner(run_dir).pid   # rank 0, the process that trains, holds the folder's lock
    os.kill(pid, signal.SIGSTOP)
    try:
        done = len(epochs_recorded(run_dir)) if (run_dir / "metrics.jsonl").is_file() else 0
        assert done < EPOCHS, "the run ended before it could be preempted"
        os.kill(pid, signal.SIGUSR2)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A sweep through submitit's local executor of two runs, one preempted after its first
    checkpoint and one that fails; and the first run alone, uninterrupted, through the debug
    executor (in this process)."""
    root = tmp_path_factory.mktemp("slurm")
    both, alone = sweep_file(root / "both.yaml", [EPOCHS, 0]), sweep_file(root / "alone.yaml", [EPOCHS])
    try:
        assert sweep(alone, "--out", root / "debug", "--executor", "submitit-debug") == 0
        codes = []
        thread = threading.Thread(target=lambda: codes.append(
            sweep(both, "--out", root / "local", "--executor", "submitit-local")))
        thread.start()
        try:
            preempt_after_first_checkpoint(root / "local" / run_ids(both)[0])
        finally:
            thread.join()
        assert codes == [1]   # one run failed
        yield root, both
    finally:
        for pid in living(root):
            os.kill(pid, signal.SIGKILL)


def test_preempted_run_is_requeued_and_ends_with_the_numbers_of_an_uninterrupted_run(study):
    root, both = study
    preempted = root / "local" / run_ids(both)[0]
    assert len(json.loads((preempted / "meta.json").read_text())["resumed_at"]) == 1
    log = next((root / "local" / "logs" / preempted.name).glob("*_0_log.out")).read_text()
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    assert numbers(preempted) == numbers(root / "debug" / preempted.name)


def test_a_deferred_signal_acts_at_the_next_safe_point_and_not_where_it_lands():
    """submitit's requeue handler raises SystemExit; landing inside torch.save it would become a
    RuntimeError, so it is held until the batch loader's next safe point."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise SystemExit(3)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        with deferred_signal(signal.SIGUSR2):
            os.kill(os.getpid(), signal.SIGUSR2)
            sum(range(1000))   # bytecode runs: an undeferred handler would have raised here
            assert calls == []
            with pytest.raises(SystemExit):
                run_deferred()
            assert calls == [signal.SIGUSR2]
            run_deferred()     # handled once
            os.kill(os.getpid(), signal.SIGUSR2)   # after the last safe point: the work is done
        assert calls == [signal.SIGUSR2] and signal.getsignal(signal.SIGUSR2) is handler
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_status_lists_finished_and_failed_runs_with_the_failed_runs_last_log_lines(study, capsys):
    root, both = study
    finished, failed = run_ids(both)
    out = status(capsys, both, root / "local")
    assert "0 pending, 0 running, 1 finished, 1 failed" in out, out
    assert f"failed: {failed}, log {root / 'local' / 'logs' / failed}/" in out, out
    assert "optim.epochs must be at least 1, got 0" in out.split(f"failed: {failed}")[1], out
    assert "optim.epochs must be at least 1, got 0" in (root / "local" / failed / "error.txt").read_text()


def test_rerun_resubmits_only_the_unfinished_run(study):
    root, both = study
    finished, failed = run_ids(both)
    assert sweep(both, "--out", root / "local", "--executor", "submitit-local") == 1
    logs = root / "local" / "logs"
    assert len(list((logs / finished).glob("*_log.out"))) == 1
    assert len(list((logs / failed).glob("*_log.out"))) == 2


def test_sweep_leaves_a_run_locked_by_a_live_process_alone_and_status_says_running(tmp_path, capsys):
    path, out = sweep_file(tmp_path / "sweep.yaml", [EPOCHS]), tmp_path / "out"
    (run_id,) = run_ids(path)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(out / run_id, holder.pid)
        assert sweep(path, "--out", out, "--executor", "submitit-local") == 0
        assert not (out / "logs").exists()   # nothing was submitted
        report = status(capsys, path, out)
        assert "1 running" in report and f"process {holder.pid}" in report, report
    finally:
        holder.kill()
        holder.wait()


def test_status_of_a_local_sweep_names_pending_and_failed_runs(tmp_path, capsys):
    both, failing = sweep_file(tmp_path / "both.yaml", [EPOCHS, 0]), sweep_file(tmp_path / "failing.yaml", [0])
    out = tmp_path / "out"
    assert "2 pending" in status(capsys, both, out)
    assert sweep(failing, "--out", out) == 1   # the thread-pool executor (default)
    report = status(capsys, both, out)
    assert "1 pending, 0 running, 0 finished, 1 failed" in report, report
    assert f"log {out / run_ids(failing)[0]}.log" in report and "optim.epochs must be at least 1" in report, report


FAKE_SLURM = {  # SLURM's commands as far as submitit and `ldl sweep` use them; $FAKE_SLURM/state is sacct's answer
    "srun": "exit 1\n",
    "sbatch": 'n=$(cat "$FAKE_SLURM/next_id"); echo $((n + 1)) > "$FAKE_SLURM/next_id"\n'
              'cp "$1" "$FAKE_SLURM/job_$n.sh"\necho "Submitted batch job $n"\n',
    "sacct": 'state=$(cat "$FAKE_SLURM/state")\n'
             'case " $* " in *" -n "*) ;; *) echo "JobID|State|NodeList" ;; esac\n'
             'n=100; while [ $n -lt $(cat "$FAKE_SLURM/next_id") ]; do\n'
             '  case " $* " in *" -n "*) echo "$n|$state" ;; *) echo "$n|$state|node1" ;; esac; n=$((n + 1)); done\n',
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch keeps each job's script and answers with job ids from 100; no job ever runs."""
    folder = tmp_path / "fake-slurm"
    (folder / "bin").mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        (folder / "bin" / name).write_text("#!/bin/sh\n" + body)
        (folder / "bin" / name).chmod(0o755)
    (folder / "next_id").write_text("100")
    monkeypatch.setenv("PATH", f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    return folder


def test_slurm_jobs_get_the_asked_resources_and_status_follows_sacct(tmp_path, capsys, fake_slurm):
    path, out = sweep_file(tmp_path / "sweep.yaml", [EPOCHS]), tmp_path / "out"
    (run_id,) = run_ids(path)
    (fake_slurm / "state").write_text("OUT_OF_MEMORY")
    assert sweep(path, "--out", out, "--executor", "slurm", "--partition", "gpu", "--gpus", "2", "--mem", "64G",
                 "--time", "1-00:00:00") == 1
    script = (fake_slurm / "job_100.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=64G",
                 "--time=1440", "--signal=USR2@", f"--output={out / 'logs' / run_id}/%j_0_log.out"):
        assert f"#SBATCH {line}" in script, script   # --cpus-per-task from the file's slurm: block
    assert "ended without a result (state OUT_OF_MEMORY)" in (out / run_id / "error.txt").read_text()
    report = status(capsys, path, out)
    assert "1 failed" in report and "SLURM job 100 OUT_OF_MEMORY" in report, report
    (fake_slurm / "state").write_text("PENDING")   # SLURM put the job back in its queue
    report = status(capsys, path, out)
    assert "1 pending" in report and "SLURM job 100 PENDING" in report, report
    capsys.readouterr()
    assert sweep(path, "--out", out, "--executor", "slurm") == 0
    assert "1 still queued" in capsys.readouterr().out
    assert (fake_slurm / "next_id").read_text().strip() == "101"   # nothing submitted twice


@pytest.mark.parametrize("args, message", [
    (["--executor", "slurm"], "--executor slurm needs SLURM's sbatch and srun"),
    (["--executor", "submitit-local", "--time", "3 days"], "slurm time: minutes, HH:MM:SS or D-HH:MM:SS, got '3 days'"),
    (["--gpus", "2"], "--partition, --time, --gpus, --cpus and --mem are for --executor slurm"),
])
def test_slurm_settings_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("PATH", str(tmp_path))   # no SLURM here
    path = sweep_file(tmp_path / "sweep.yaml", [EPOCHS])
    assert sweep(path, "--out", tmp_path / "out", *args) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and "\n" not in out and message in out, out


def test_two_tasks_started_as_srun_starts_them_train_one_gloo_run(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
    slurm = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": str(os.getpid()), "SLURM_JOB_NODELIST": socket.gethostname(),
             "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    tasks = [subprocess.Popen([sys.executable, "-m", "ldl.cli", "train", *small(run, "optim.epochs=2")],
                              env={**env, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "model_consistent": True, "method_state_consistent": True}


def test_rendezvous_from_slurm_and_from_submitit_agree(monkeypatch):
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)
    assert first_host("gpu[07-09,12],cpu1") == "gpu07" and first_host("a1,a2") == "a1"
    assert first_host("rack[2-3]-n[010-011]") == "rack2-n010"
    slurm = {"SLURM_JOB_ID": "5551", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    expected = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                "MASTER_PORT": port_for("5551")}
    assert from_slurm(slurm) == expected
    assert from_slurm({**slurm, "SLURM_NTASKS": "1"}) == {}   # one task: no process group
    for name, value in {**slurm, "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(name, value)
    assert from_submitit() == expected
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")   # the user's own address wins
    assert from_submitit()["MASTER_ADDR"] == "10.0.0.1"


def test_rendezvous_of_an_srun_step_on_part_of_the_allocation_and_of_two_steps_of_one_job():
    """Two runs packed into one 3-node allocation (`srun -N1 ... & srun -N2 ... &`): each step's
    rank 0 is on its own step's first node, and the two steps do not share a port."""
    task = {"SLURM_JOB_ID": "5551", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_JOB_NODELIST": "gpu[07-09]"}
    first = from_slurm({**task, "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu07"})
    second = from_slurm({**task, "SLURM_STEP_ID": "1", "SLURM_STEP_NODELIST": "gpu[08-09]"})
    assert (first["MASTER_ADDR"], second["MASTER_ADDR"]) == ("gpu07", "gpu08")
    assert first["MASTER_PORT"] != second["MASTER_PORT"]
    assert 15000 <= int(second["MASTER_PORT"]) < 30000


def test_lock_of_an_earlier_incarnation_of_a_requeued_slurm_job_is_stale(tmp_path, monkeypatch):
    """A job requeued onto another node finds its first incarnation's lock (killed, never released):
    the host cannot be checked, but SLURM runs one incarnation of a job at a time."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "node-a", "started": None,
                                           "slurm_job": "77", "slurm_restart": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(RunLockedError, match=r"process 1 on node-a \(SLURM job 77\)"):
        RunLock(run).acquire()   # another job's lock on another node: live
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock = RunLock(run)
    with pytest.warns(UserWarning, match="stale lock"):
        lock.acquire()
    assert (read_owner(run).slurm_job, read_owner(run).slurm_restart) == ("77", 1)
    lock.release()


@pytest.mark.parametrize("visible, device", [(4, 3), (1, 0)])
def test_a_task_bound_to_its_own_gpu_uses_cuda_0(monkeypatch, visible, device):
    """srun --gpus-per-node 4: every task sees the node's 4 GPUs and takes cuda:LOCAL_RANK;
    srun --gpus-per-task 1 (or --gpu-bind): each task sees only its own, as cuda:0."""
    import torch
    import torch.distributed as dist

    from ldl.train import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", device)


def test_lock_left_by_a_slurm_job_that_was_killed_does_not_block_the_rerun(tmp_path, capsys, monkeypatch,
                                                                          fake_slurm):
    """A job killed for memory on a compute node never released its run folder's lock.  From the
    login node that host cannot be checked, but sacct says the job ended: --status says failed, a
    rerun resubmits the run, and the new job (on a node of its own) takes the folder over."""
    path, out = sweep_file(tmp_path / "sweep.yaml", [EPOCHS]), tmp_path / "out"
    (run_id,) = run_ids(path)
    (fake_slurm / "state").write_text("OUT_OF_MEMORY")
    assert sweep(path, "--out", out, "--executor", "slurm") == 1   # job 100 (the fake sbatch runs nothing)
    lock = {"pid": 4242, "host": "node-a", "started": None, "slurm_job": "100", "slurm_restart": 0}
    (out / run_id / ".lock").write_text(json.dumps(lock))   # as job 100 left it on node-a
    (fake_slurm / "state").write_text("RUNNING")
    assert live_owner(out / run_id) is not None   # while its job runs, the lock is live
    assert "1 running" in status(capsys, path, out)
    (fake_slurm / "state").write_text("OUT_OF_MEMORY")
    assert live_owner(out / run_id) is None
    report = status(capsys, path, out)
    assert "1 failed" in report and "SLURM job 100 OUT_OF_MEMORY" in report, report
    assert sweep(path, "--out", out, "--executor", "slurm") == 1
    assert (fake_slurm / "next_id").read_text().strip() == "102"   # resubmitted as job 101
    monkeypatch.setenv("SLURM_JOB_ID", "101")   # job 101 starts on another node
    with pytest.warns(UserWarning, match="stale lock"):
        RunLock(out / run_id).acquire()
    assert read_owner(out / run_id).slurm_job == "101"


def test_a_bare_memory_number_means_gigabytes_from_the_file_and_the_command_line_alike():
    assert slurm_options({"slurm": {"mem": 32}}, {"mem": None})["mem"] == "32G"
    assert slurm_options({}, {"mem": "32"})["mem"] == "32G"
    assert slurm_options({"slurm": {"mem": "500M"}}, {"mem": "64G"})["mem"] == "64G"


def test_slurm_counts_are_whole_numbers_named_when_they_are_not():
    assert slurm_options({"slurm": {"gpus": "2", "nodes": 1}}, {"cpus": "8"}) == {"gpus": 2, "nodes": 1, "cpus": 8}
    with pytest.raises(SweepError, match="slurm gpus: a whole number, got 'two'"):
        slurm_options({"slurm": {"gpus": "two"}}, {})
