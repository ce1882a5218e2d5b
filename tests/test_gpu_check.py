"""benchmarks/gpu_check.sh (issue 17): its dry run runs every step on the CPU at tiny size, reports
each one's status and writes the results file; a run that fails is recorded and the next one runs."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("methods", "parity", "torchrun", "bench", "study")
# The two halves run side by side: each step is a chain of short single-threaded processes, so
# two chains fill a 2-core machine where one leaves a core idle.
HALVES = {"a": "1,2", "b": "3,4,5"}


def assert_reported(name: str, result: dict) -> None:
    """ok, failed with its error, or skipped with the reason; the same for each of its parts."""
    assert result["status"] in ("ok", "failed", "skipped"), (name, result)
    if result["status"] == "failed":
        assert result.get("error"), (name, result)
    if result["status"] == "skipped":
        assert result.get("reason"), (name, result)
    for part, value in result.get("parts", {}).items():
        assert_reported(f"{name}.{part}", value)


def test_dry_run_reports_every_step_and_writes_the_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    procs = {half: subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--steps", steps,
                                     "--work", str(tmp_path / half / "work"), str(tmp_path / half / "out")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for half, steps in HALVES.items()}
    outputs = {half: proc.communicate(timeout=600)[0] for half, proc in procs.items()}
    results = {}
    for half, proc in procs.items():
        path = tmp_path / half / "out" / f"bench-{socket.gethostname()}-cpu.json"
        assert path.is_file(), outputs[half]
        results[half] = json.loads(path.read_text())
        assert (tmp_path / half / "out" / "gpu_check.log").is_file()
        for name in STEPS:
            assert_reported(name, results[half]["gpu_check"]["steps"][name])
    ran = {name: results["a" if name in ("methods", "parity") else "b"]["gpu_check"]["steps"][name] for name in STEPS}
    # On a CPU every step must work: a failure here is a bug in the script or in what it runs.
    failed = {name: r.get("error") for name, r in ran.items() if r["status"] != "ok"}
    assert not failed, f"{failed}\n{outputs['a'][-3000:]}\n{outputs['b'][-3000:]}"
    assert all(proc.returncode == 0 for proc in procs.values())

    methods = ran["methods"]["parts"]
    assert {"ce", "ldlva:faithful", "eac", "compile:ce", "compile:ldlva"} <= set(methods)
    assert methods["distill"]["status"] == "skipped"
    parity = ran["parity"]["parts"]
    assert parity["cpu_repeat"]["exact"]                       # two CPU runs repeat exactly
    resume = parity["resume"]
    assert resume["exact"] and resume["killed_after_epoch"] < len(resume["epochs"]) == 4
    assert ran["torchrun"]["parts"]["ddp_step"]["backend"] == "gloo"
    assert {"train", "knn", "run"} <= set(results["b"])           # ldl bench's sections, merged into the file
    assert ran["study"]["finished"] == ran["study"]["planned"] == 2
    assert (tmp_path / "b" / "out" / "gpu_study.tar.gz").is_file()


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failing_run_is_recorded_and_the_next_one_runs(tmp_path):
    gpu_check = load_gpu_check()
    tiny = ["device=cpu", "log.wandb=disabled", "log.progress=false", "data.image_size=32", "model.width=8",
            "model.stem=small", "data.synthetic.num_train=128", "data.synthetic.num_val=32",
            "data.synthetic.num_test=32", "optim.epochs=1", "optim.batch_size=64"]
    tasks = [{"name": "bad", "overrides": [*tiny, "method.name=no_such_method"]},
             {"name": "good", "overrides": [*tiny, f"run.dir={tmp_path / 'good'}"]}]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    assert gpu_check.worker_runs(tmp_path / "tasks.json", tmp_path / "records.jsonl") == 0
    records = {r["name"]: r for r in map(json.loads, (tmp_path / "records.jsonl").read_text().splitlines())}
    assert records["bad"]["status"] == "failed" and "no_such_method" in records["bad"]["error"]
    assert records["good"]["status"] == "ok" and records["good"]["epochs"] == 1
