import pytest

from ldl.config import ConfigError, load_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg.data.name == "synthetic" and cfg.method.name == "ce"


def test_inheritance_chain_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "optim:\n  lr: 0.01\n  epochs: 7\nmodel:\n  arch: resnet50\n")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", "_base_: ../base.yaml\noptim:\n  lr: 0.02\n")
    cfg = load_config(child, ["optim.epochs=3", "model.arch=resnet18", "data.noise.rate=0.3"])
    assert cfg.optim.lr == 0.02          # child beats base
    assert cfg.optim.epochs == 3         # override beats both
    assert cfg.model.arch == "resnet18"
    assert cfg.data.noise.rate == 0.3
    assert cfg.optim.batch_size == 128   # untouched default


def test_unknown_key_in_file_names_key_file_and_closest(tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(bad)


def test_unknown_key_in_override():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.arhc' \(did you mean 'model.arch'\?\)"):
        load_config(None, ["model.arhc=resnet50"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="optim.epochs' expects int"):
        load_config(None, ["optim.epochs=ten"])


def test_malformed_override_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(a)


def test_experiment_configs_all_resolve():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.glob("experiments/**/*.yaml"))
    assert files, "experiments/ holds configs"
    for f in files:
        if f.parent.name in ("sweeps", "cross"):  # sweep files and cross plans are not configs
            continue
        load_config(f)
