"""The data options are declared once, as :class:`DataSpec`'s fields (help and choices in their metadata), and every
command line parses them from there; a model folder is replaced whole or not at all."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from bioscan_clip.apps import cli
from bioscan_clip.apps import train as train_app
from bioscan_clip.apps.cli import SUBCOMMANDS
from bioscan_clip.apps.commands.options import add_data_arguments, data_spec
from bioscan_clip.data.spec import DataSpec
from bioscan_clip.training import checkpoints
from bioscan_clip.training.config import TrainConfig
from dataset_scripts.images import VERIFY_MODES
from dataset_scripts.integrity import IMAGE_POLICIES
from dataset_scripts.sources import RETRIEVAL_SPLITS

DATA_COMMANDS = ("evaluate", "index", "embed")
DATA_FIELDS = dataclasses.fields(DataSpec)
DATA_NAMES = {item.name for item in DATA_FIELDS}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``bioscan-clip NAME``, built as the CLI builds it (its module's add_arguments)."""
    parser = argparse.ArgumentParser(prog=f"bioscan-clip {name}")
    cli.command_module(name).add_arguments(parser)
    return parser


def train_parser(monkeypatch, argv: list[str]) -> tuple[argparse.ArgumentParser, TrainConfig]:
    """The parser that ``train_accelerate.py``'s parse_args builds (recorded as it is made) and what it parsed."""
    made = []

    class Recording(train_app.HfArgumentParser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_app, "HfArgumentParser", Recording)
    config = train_app.parse_args(argv)
    return made[-1], config


def option(parser: argparse.ArgumentParser, name: str) -> argparse.Action:
    found = [action for action in parser._actions if f"--{name}" in action.option_strings]
    assert len(found) == 1, f"{parser.prog}: --{name} is declared {len(found)} times"
    return found[0]


def assert_options_of_dataspec(parser: argparse.ArgumentParser) -> None:
    for item in DATA_FIELDS:
        action = option(parser, item.name)
        assert action.dest == item.name
        assert action.help == item.metadata["help"], f"{parser.prog} --{item.name}: help declared again"
        expected = item.metadata.get("choices")
        assert (tuple(action.choices) if action.choices else None) == expected, f"{parser.prog} --{item.name}"


def test_every_data_field_carries_its_help_and_choices():
    for item in DATA_FIELDS:
        assert item.metadata.get("help"), f"DataSpec.{item.name} has no help"
    choices = {item.name: item.metadata.get("choices") for item in DATA_FIELDS}
    assert choices["source"] == tuple(sorted(RETRIEVAL_SPLITS))
    assert choices["image_policy"] == tuple(IMAGE_POLICIES)
    assert choices["verify_images"] == tuple(VERIFY_MODES)


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_every_data_command_parses_the_dataspec_fields(command, capsys):
    parser = command_parser(command)
    assert_options_of_dataspec(parser)
    # The data group holds the DataSpec fields and nothing declared beside them.
    (group,) = [group for group in parser._action_groups if group.title == "data"]
    assert {action.dest for action in group._group_actions} == DATA_NAMES
    spec = data_spec(argparse.Namespace(**{action.dest: action.default for action in group._group_actions}))
    expected_source = None if command == "embed" else "mini"  # embed's override of the default source
    assert spec == dataclasses.replace(DataSpec(), source=expected_source)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert f"(default: {expected_source}; mini is generated" in capsys.readouterr().out


def test_commands_that_name_a_dataset_take_every_data_option():
    """A new command that declares --data_dir or --dataset_path by hand, instead of add_data_arguments, fails."""
    for name in SUBCOMMANDS:
        destinations = {action.dest for action in command_parser(name)._actions}
        if destinations & {"data_dir", "dataset_path", "cache_dir"}:
            assert destinations >= DATA_NAMES, f"bioscan-clip {name} lacks {sorted(DATA_NAMES - destinations)}"
            assert_options_of_dataspec(command_parser(name))
    for name in DATA_COMMANDS:
        assert {action.dest for action in command_parser(name)._actions} >= DATA_NAMES


def test_the_data_options_parse_the_same_everywhere(monkeypatch):
    argv = ["--source", "bold", "--data_dir", "export.tsv", "--partition", "clibd", "--verify_images", "decode"]
    argv += ["--num_proc", "3", "--keep_provisional_names", "--genus_from_species", "--image_policy", "skip"]
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    from_command = data_spec(parser.parse_args(argv))
    _, config = train_parser(monkeypatch, argv)
    assert config.data() == from_command
    assert type(config.data()) is DataSpec
    assert from_command.builder_options() == {
        "partition": "clibd",
        "image_policy": "skip",
        "verify_images": "decode",
        "num_proc": 3,
        "genus_from_species": True,
        "keep_provisional_names": True,
    }


def test_training_parses_the_dataspec_fields(monkeypatch, capsys):
    parser, config = train_parser(monkeypatch, [])
    assert_options_of_dataspec(parser)
    assert config.data() == DataSpec()
    with pytest.raises(SystemExit):
        train_app.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--verify_images {header,decode,none}" in text and "--num_proc NUM_PROC" in text
    assert text.count("(default: mini") == 1  # the field's own %(default)s, not a second one from the formatter


def test_trainconfig_declares_no_data_field_itself():
    own = set(vars(TrainConfig).get("__annotations__", {}))
    assert not own & DATA_NAMES, f"TrainConfig declares {sorted(own & DATA_NAMES)} again; they are DataSpec's"
    inherited = {item.name: item for item in dataclasses.fields(TrainConfig)}
    for item in DATA_FIELDS:
        assert inherited[item.name] is item  # the very same field: default, help and choices
    # Training's defaults are DataSpec's; a preset sets them by name; keyword construction keeps working.
    assert TrainConfig().source == "mini" and TrainConfig().data() == DataSpec()
    assert TrainConfig.from_preset("clibd-5m").source == "bioscan5m"
    config = TrainConfig.from_preset("tiny", source="bold", data_dir="x.tsv", partition="clibd", num_proc=2)
    assert config.data() == DataSpec(source="bold", data_dir="x.tsv", partition="clibd", num_proc=2)
    assert TrainConfig(verify_images="none", epochs=1).data().verify_images == "none"


def test_reading_the_option_constants_imports_no_builder():
    code = (
        "import sys, dataset_scripts.images, dataset_scripts.integrity, dataset_scripts.sources\n"
        "heavy = {'dataset_scripts.loading', 'dataset_scripts.base', 'dataset_scripts.bioscan5m',"
        " 'dataset_scripts.bioscan1m', 'dataset_scripts.bold', 'dataset_scripts.mini_bioscan'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


# ---- save_pretrained: the old model folder or the new one, never a mixture --------------------------------------
class _Writes:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    def save_pretrained(self, folder) -> None:
        Path(folder, self.name).write_text("new")
        if self.fail:
            raise OSError("disk full")


def _old_model(folder: Path) -> dict[str, str]:
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    (folder / "stale.json").write_text("old")
    return {path.name: path.read_text() for path in folder.iterdir()}


def test_save_pretrained_replaces_the_folder_whole(tmp_path):
    folder = tmp_path / "best_model"
    _old_model(folder)
    checkpoints.save_pretrained(_Writes("model.safetensors"), _Writes("processor_config.json"), folder)
    assert {path.name: path.read_text() for path in folder.iterdir()} == {
        "model.safetensors": "new",
        "processor_config.json": "new",
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best_model"]  # no staging or retired folder left


def test_a_failure_while_saving_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "best_model"
    before = _old_model(folder)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_pretrained(_Writes("model.safetensors"), _Writes("processor_config.json", fail=True), folder)
    assert {path.name: path.read_text() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best_model"]
    # A first save that fails leaves nothing behind.
    with pytest.raises(OSError):
        checkpoints.save_pretrained(_Writes("a"), _Writes("b", fail=True), tmp_path / "final_model")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best_model"]
