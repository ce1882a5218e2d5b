"""benchmarks/gpu_check.sh --dry-run: every step of issue 17's GPU check runs on the CPU at tiny
size and reports its status, and the results file is written."""
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
