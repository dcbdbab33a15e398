"""--prompts: the prompt file and the per-task configs (the Ray scheduling itself is not exercised here)."""

from __future__ import annotations

import pytest

from mvforge.errors import UserError
from mvforge.sds.config import SDSConfig
from mvforge.sds.ray_prompts import _task_configs, read_prompts


def test_prompt_file_and_task_configs(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# demo prompts\na red mug\n\n  a blue chair  \n")
    prompts = read_prompts(f)
    assert prompts == ["a red mug", "a blue chair"]
    one = _task_configs(SDSConfig(out="sds"), prompts, [0])
    assert [(c.prompt, c.seed, c.out) for c in one] == [("a red mug", 0, "sds"), ("a blue chair", 0, "sds")]
    two = _task_configs(SDSConfig(out="sds"), prompts[:1], [3, 4])
    assert [(c.seed, c.out) for c in two] == [(3, "sds/seed-3"), (4, "sds/seed-4")]


def test_bad_prompt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="no letters or digits"):
        _task_configs(SDSConfig(), ["!!!"], [0])
