import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """One packed-data cache for the whole session, so each synthetic split renders once."""
    path = tmp_path_factory.mktemp("ldl-cache")
    os.environ["LDL_CACHE"] = str(path)
    return path


def tiny(run_dir: Path, *extra: str) -> list[str]:
    """Overrides for a CPU run of a few seconds on a tiny synthetic set."""
    return [
        "data.image_size=32", "data.synthetic.num_train=1500", "data.synthetic.num_val=160",
        "data.synthetic.num_test=240", "model.width=16", "model.stem=small", "optim.epochs=3",
        "optim.batch_size=64", "optim.lr=0.003", "log.wandb=disabled", "log.progress=false",
        f"run.dir={run_dir}", *extra,
    ]
