import pytest

from capmix.config import from_dict, load_config, parse_override
from capmix.errors import ConfigError


def test_default_preset_loads_and_is_the_embedded_default():
    cfg = load_config()
    assert cfg.spark.master == "local[*]"
    assert cfg.lake.path == "lake"
    assert cfg.source.endswith("conf/local.yaml")


@pytest.mark.parametrize("preset", ["local", "cluster", "databricks"])
def test_every_shipped_preset_is_valid(preset):
    from capmix.resources import resource_dir

    load_config(resource_dir("conf") / f"{preset}.yaml")


@pytest.mark.parametrize("data, key, fragment", [
    ({"spark": {"mastr": "local"}}, "spark.mastr", "unknown key"),
    ({"sparkk": {}}, "sparkk", "unknown key"),
    ({"spark": {"shuffle_partitions": 0}}, "spark.shuffle_partitions", "positive"),
    ({"spark": {"shuffle_partitions": "many"}}, "spark.shuffle_partitions", "integer"),
    ({"spark": {"ui": "yes"}}, "spark.ui", "true or false"),
    ({"lake": {"backend": "hive"}}, "lake.backend", "one of"),
    ({"lake": {"path": "  "}}, "lake.path", "empty"),
    ({"lake": {"tables": {"poool": "p"}}}, "lake.tables.poool", "unknown table"),
    ({"ingest": {"max_caption_chars": -1}}, "ingest.max_caption_chars", "positive"),
    ({"ingest": {"inputs": "a.tar"}}, "ingest.inputs", "list"),
    ({"spark": []}, "spark", "mapping"),
])
def test_bad_values_name_their_key(data, key, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert str(info.value).count("\n") == 0


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark:\n  master: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_overrides_apply_before_validation(tmp_path):
    cfg = load_config(None, {"lake.path": str(tmp_path), "spark.shuffle_partitions": 3})
    assert cfg.lake.path == str(tmp_path)
    assert cfg.spark.shuffle_partitions == 3
    with pytest.raises(ConfigError, match="spark.shuffle_partitions"):
        load_config(None, {"spark.shuffle_partitions": -2})


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("spark.master=local[2]") == ("spark.master", "local[2]")
    with pytest.raises(ConfigError):
        parse_override("novalue")
