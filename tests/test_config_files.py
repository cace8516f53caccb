"""Config files and keys: `_BASE_` files, the *Diff configs as their baseline's plus a few keys,
keys declared by the trainers that read them, and the deprecated names of moved keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import promptdiff.trainers  # noqa: F401  (registers the trainers and their config keys)
from promptdiff.config_keys import declare_keys, declared_namespaces, extend_cfg
from promptdiff.engine.config import BASE_KEY, ConfigError, merge_file, merge_opts
from promptdiff.engine.runinfo import _flatten
from promptdiff.host import TRAINER_REGISTRY, get_cfg_default

REPO = Path(__file__).resolve().parent.parent
TRAINER_CONFIGS = REPO / "configs" / "trainers"
DIFF_CONFIGS = sorted(TRAINER_CONFIGS.glob("*Diff/*.yaml"))


def merged(*paths) -> dict:
    """The flattened config of the defaults with `paths` merged in order."""
    cfg = extend_cfg(get_cfg_default())
    for path in paths:
        merge_file(cfg, str(path))
    return _flatten(cfg)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", DIFF_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_diff_config_is_its_baseline_plus_its_declared_keys(path):
    own = yaml.safe_load(path.read_text())
    baseline = TRAINER_CONFIGS / path.parent.name.removesuffix("Diff") / path.name
    assert own.pop(BASE_KEY) == f"../{baseline.parent.name}/{baseline.name}"
    declared = _flatten(own)
    # only the schedule and the prompt-diffusion block differ from the baseline's file
    assert all(k == "OPTIM.MAX_EPOCH" or k.startswith("TRAINER.PD.") for k in declared), declared
    expected = merged(baseline)
    # stage 1 is the baseline's whole schedule; stage 2 comes after it
    assert declared["TRAINER.PD.STAGE1_EPOCHS"] == expected["OPTIM.MAX_EPOCH"]
    assert declared["OPTIM.MAX_EPOCH"] > expected["OPTIM.MAX_EPOCH"]
    for key, value in declared.items():
        assert key in expected, key
        expected[key] = value
    assert merged(path) == expected


def test_base_files_chain_relative_to_the_file_naming_them(tmp_path):
    write(tmp_path / "a.yaml", "OPTIM:\n  LR: 0.1\n  MAX_EPOCH: 3\nSEED: 7\n")
    write(tmp_path / "sub" / "b.yaml", f"{BASE_KEY}: ../a.yaml\nOPTIM:\n  MAX_EPOCH: 5\n")
    c = write(tmp_path / "c.yaml", f"{BASE_KEY}: sub/b.yaml\nOPTIM:\n  LR: 0.2\n")
    got = merged(c)
    plain = merged()
    changed = {k: got[k] for k in got if got[k] != plain[k]}
    assert changed == {"OPTIM.LR": 0.2, "OPTIM.MAX_EPOCH": 5, "SEED": 7}


def test_base_cycle_is_one_error_naming_the_file(tmp_path):
    write(tmp_path / "x.yaml", f"{BASE_KEY}: y.yaml\nSEED: 1\n")
    write(tmp_path / "y.yaml", f"{BASE_KEY}: x.yaml\nSEED: 2\n")
    with pytest.raises(ConfigError, match=r"y\.yaml.*'x\.yaml'.*cycle"):
        merged(tmp_path / "x.yaml")
    me = write(tmp_path / "me.yaml", f"{BASE_KEY}: ./me.yaml\n")
    with pytest.raises(ConfigError, match=r"me\.yaml.*cycle"):
        merged(me)


def test_missing_or_malformed_base_is_one_error_naming_both_files(tmp_path):
    path = write(tmp_path / "d.yaml", f"{BASE_KEY}: ../nowhere/base.yaml\nSEED: 1\n")
    with pytest.raises(ConfigError) as err:
        merged(path)
    msg = str(err.value)
    assert "d.yaml" in msg and os.path.join("nowhere", "base.yaml") in msg
    assert "does not exist" in msg and "\n" not in msg
    bad = write(tmp_path / "e.yaml", f"{BASE_KEY}: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match=r"e\.yaml.*must name one yaml file"):
        merged(bad)
    # an unknown key in a base file names the base file, not the one extending it
    write(tmp_path / "f.yaml", "OPTIM:\n  NOPE: 1\n")
    g = write(tmp_path / "g.yaml", f"{BASE_KEY}: f.yaml\n")
    with pytest.raises(ConfigError, match=r"f\.yaml.*NOPE"):
        merged(g)


def test_moved_text_keys_keep_their_old_names_with_a_warning(tmp_path, capsys):
    old = write(
        tmp_path / "old.yaml", "TRAINER:\n  PD:\n    TEXT_CHUNK: 8\n    TEXT_SHARE_PREFIX: False\n"
    )
    got = merged(old)
    assert (got["MODEL.TEXT.CHUNK"], got["MODEL.TEXT.SHARE_PREFIX"]) == (8, False)
    assert not any(k.startswith("TRAINER.PD.TEXT") for k in got)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("old.yaml" in line for line in lines)
    assert "TRAINER.PD.TEXT_CHUNK is deprecated; use MODEL.TEXT.CHUNK" in lines[0]
    cfg = extend_cfg(get_cfg_default())
    merge_opts(cfg, ["TRAINER.PD.TEXT_CHUNK", "4", "MODEL.TEXT.SHARE_PREFIX", "False"])
    assert (cfg.MODEL.TEXT.CHUNK, cfg.MODEL.TEXT.SHARE_PREFIX) == (4, False)
    [line] = capsys.readouterr().err.splitlines()
    assert "Command-line option: TRAINER.PD.TEXT_CHUNK is deprecated" in line


def test_each_trainer_declares_its_namespace():
    namespaces = set(declared_namespaces())
    for name in TRAINER_REGISTRY.registered_names():
        key = getattr(TRAINER_REGISTRY.get(name), "CFG_KEY", "")
        assert not key or f"TRAINER.{key}" in namespaces, name
    assert {"TRAINER.PD", "TRAINER.ZSCLIP", "MODEL.TEXT"} <= namespaces
    cfg = extend_cfg(get_cfg_default())
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.PD.STEPS, cfg.MODEL.TEXT.CHUNK) == (16, 1, 0)
    declare_keys("TRAINER.COCOOP", N_CTX=16, CTX_INIT="", PREC="fp16")  # the same: accepted
    with pytest.raises(ValueError, match="TRAINER.COCOOP is declared twice"):
        declare_keys("TRAINER.COCOOP", N_CTX=4)


def test_the_library_knows_no_trainer_keys_until_trainers_register_them():
    code = (
        "import sys; from promptdiff.config_keys import extend_cfg; "
        "from promptdiff.engine.config import get_cfg_default; "
        "cfg = extend_cfg(get_cfg_default()); "
        "print(sorted(cfg.TRAINER), 'promptdiff.trainers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["['NAME']", "False"]


def test_a_run_saved_under_the_old_text_key_names_is_compared_under_the_new_ones():
    from promptdiff.engine.runinfo import differences

    saved = {"TRAINER.PD.TEXT_SHARE_PREFIX": False, "SEED": 1}
    now = {"MODEL.TEXT.SHARE_PREFIX": True, "SEED": 1}
    assert differences(saved, now) == ["MODEL.TEXT.SHARE_PREFIX: False -> True"]
    assert differences({**saved, "TRAINER.PD.TEXT_SHARE_PREFIX": True}, now) == []


# ---- test-time keys: marked where the key is declared, read by run identity ----------------------
# every declared key that run identity leaves out (a resume or --eval-only may change them)
TEST_TIME = {
    "TRAINER.PD.STEPS",
    "TRAINER.PD.SAMPLER",
    "TRAINER.PD.NUM_SAMPLES",
    "TRAINER.PD.NOISE_SEED",
    "TRAINER.PD.INFERENCE",
    "TRAINER.PD.SET_CONTEXT_POOL",
    "TRAINER.PD.HELDOUT_FIT",
    "TRAINER.GENPT.ENSEMBLE",
    "MODEL.TEXT.CHUNK",
}


def test_run_identity_leaves_out_exactly_the_test_time_keys():
    from promptdiff.engine.runinfo import run_config

    cfg = extend_cfg(get_cfg_default())
    declared = set()
    for namespace in declared_namespaces():
        node = cfg
        for part in namespace.split("."):
            node = node[part]
        declared |= {f"{namespace}.{key}" for key in node}
    kept = set(run_config(cfg))
    assert declared - kept == TEST_TIME
    assert {"TRAINER.PD.LR", "TRAINER.GENPT.MI_WEIGHT", "MODEL.TEXT.SHARE_PREFIX"} <= kept


def test_a_key_marked_test_time_leaves_run_identity(monkeypatch):
    import promptdiff.config_keys as config_keys
    from promptdiff.engine.runinfo import run_config

    # a namespace of its own, forgotten again after the test
    monkeypatch.setattr(config_keys, "_DECLARED", dict(config_keys._DECLARED))
    monkeypatch.setattr(config_keys, "_TEST_TIME", dict(config_keys._TEST_TIME))
    declare_keys("TRAINER.XTEST", test_time=("SHOW",), SHOW=1, LEARN=2)
    config = run_config(extend_cfg(get_cfg_default()))
    assert "TRAINER.XTEST.LEARN" in config and "TRAINER.XTEST.SHOW" not in config
    with pytest.raises(ValueError, match="TRAINER.XTEST is declared twice"):
        declare_keys("TRAINER.XTEST", SHOW=1, LEARN=2)  # the same defaults, unmarked
    with pytest.raises(ValueError, match="TRAINER.YTEST marks SHOW test-time but does not declare"):
        declare_keys("TRAINER.YTEST", test_time=("SHOW",), LEARN=2)
