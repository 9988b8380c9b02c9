"""Config validation: every kind of bad key gives one line naming the file and the dotted key."""
import pytest

from ppe_ingest.base.config import Field, load_config, validate
from ppe_ingest.base.errors import UserError

SCHEMA = {
    "n_members": Field(int, default=64, min=2),
    "lr": Field(float, default=1e-3, gt=0),
    "method": Field(str, default="lstm", choices=("lstm", "transformer")),
    "table": Field(str, path=True, nullable=True, default=None),
    "train": Field(dict, schema={"epochs": Field(int, default=3, min=1, max=1000),
                                 "vars": Field(list, items=str, default=["QRUNOFF"])}, default={}),
}


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_filled_and_ints_accepted_as_floats(tmp_path):
    cfg = load_config(write(tmp_path, "lr: 1\ntrain: {epochs: 5}\n"), SCHEMA)
    assert cfg == {"n_members": 64, "lr": 1.0, "method": "lstm", "table": None,
                   "train": {"epochs": 5, "vars": ["QRUNOFF"]}}


@pytest.mark.parametrize("text, needle", [
    ("n_membrs: 3\n", "run.yaml: n_membrs: unknown key"),
    ("n_members: three\n", "run.yaml: n_members: expected int, got str"),
    ("n_members: 1\n", "run.yaml: n_members: 1 is below the minimum 2"),
    ("lr: 0\n", "run.yaml: lr: 0.0 must be > 0"),
    ("method: gru\n", "run.yaml: method: 'gru' is not one of lstm, transformer"),
    ("table: nowhere.csv\n", "run.yaml: table: file not found"),
    ("train: {epochs: 0}\n", "run.yaml: train.epochs: 0 is below the minimum 1"),
    ("train: {vars: [QRUNOFF, 3]}\n", "run.yaml: train.vars[1]: expected str"),
    ("train: {epoch: 2}\n", "run.yaml: train.epoch: unknown key"),
    ("n_members: true\n", "run.yaml: n_members: expected int, got bool"),
])
def test_bad_values_name_the_key(tmp_path, text, needle):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, text), SCHEMA)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_paths_resolve_relative_to_the_config_file(tmp_path):
    (tmp_path / "t.csv").write_text("x\n")
    cfg = load_config(write(tmp_path, "table: t.csv\n"), SCHEMA)
    assert cfg["table"] == str(tmp_path / "t.csv")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", SCHEMA)
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"), SCHEMA)


def test_yaml_tags_are_not_executed(tmp_path):
    # safe_load refuses python object tags instead of constructing them
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "lr: !!python/object/apply:os.system ['true']\n"), SCHEMA)


def test_section_and_required():
    with pytest.raises(UserError, match="cfg: x: required key is missing"):
        validate({}, {"x": Field(int)}, source="cfg")
