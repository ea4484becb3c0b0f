import pytest

from thyro.config import ConfigError, load_config, parse_override


def test_defaults_are_the_study_recipe():
    cfg = load_config()
    assert (cfg.model.name, cfg.train.lr, cfg.train.loss) == ("resnet18", 1e-4, "focal")
    assert (cfg.split.n_repeats, cfg.split.test_size) == (10, 0.3)


def test_unknown_key_is_rejected_naming_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  focal_gama: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "train.focal_gama" in str(e.value) and "unknown key" in str(e.value)
    assert str(f) in str(e.value)


def test_wrong_type_is_rejected(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: 'ten'\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(f)


def test_string_number_is_not_coerced(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: \"1e-4\"\n")  # quoted: a string, not a float
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(f)


def test_override_parses_yaml_values():
    cfg = load_config(None, [parse_override("train.lr=3e-4"), parse_override("train.channels_last=true")])
    assert cfg.train.lr == 3e-4 and cfg.train.channels_last is True


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_every_config_key_is_in_the_readme_reference():
    from pathlib import Path

    from thyro.config import Config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ref = readme[readme.index("## Configuration reference"):]
    ref = ref[:ref.index("\n## ", 3)]

    def keys(model, prefix=""):
        for name, f in model.model_fields.items():
            if hasattr(f.annotation, "model_fields"):
                yield from keys(f.annotation, f"{prefix}{name}.")
            else:
                yield prefix, name

    missing = [p + n for p, n in keys(Config) if f"`{p}{n}`" not in ref and f"{n}`" not in ref and f" {n} [" not in ref
               and f"`{n}`" not in ref and f", {n}" not in ref]
    assert not missing, f"README's configuration reference lacks {missing}"
