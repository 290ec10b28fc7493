"""SearchConfig and the search's CLI (no Ray): every bad flag is one line naming it (exit 2), flags left out take
the space file's values, --resume reads the experiment's saved flags, and --help lists every flag with its
docstring."""
import dataclasses
import json

import pytest

from asl_ray.search import session
from asl_ray.search.__main__ import build_parser, main as search_main
from asl_ray.search.config import (PER_RUN_FLAGS, SearchConfig, SearchConfigError, flag_fields, flag_name,
                                   resolve)
from conftest import expect_bad_input, write_search_space


@pytest.fixture
def space(tmp_path):
    return write_search_space(tmp_path / "space.yaml", confirm={"seeds": 3, "finalists": 4, "folds": 2})


@pytest.fixture
def launched(monkeypatch):
    """main() up to the search: the SearchConfig it would run (no Ray is started)."""
    seen = []
    monkeypatch.setattr(session, "run_search", lambda sc: seen.append(sc) or 0)
    return seen


def _data_flags(synth_root, synth_cache, tmp_path):
    return ["--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent), "--storage-path",
            str(tmp_path / "runs")]


@pytest.mark.parametrize("args,needle", [
    (["--trials", "0"], "--trials"),
    (["--trials", "x"], "--trials"),
    (["--delta", "2"], "--delta"),
    (["--select", "random"], "--select"),
    (["--alpha", "0"], "--alpha"),
    (["--alpha", "0.5"], "--alpha"),
    (["--confirm-folds", "0"], "--confirm-folds"),
    (["--confirm-folds", "6"], "--confirm-folds"),  # the space has 5 folds
    (["--confirm", "-1"], "--confirm"),
    (["--confirm", "1.5"], "--confirm"),
    (["--finalists", "0"], "--finalists"),
    (["--plan-search", "guess"], "--plan-search"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    (["--max-failures", "-1"], "--max-failures"),
    (["--concurrency", "-1"], "--concurrency"),
    (["--num-cpus", "0"], "--num-cpus"),
    (["--dashboard-port", "x"], "--dashboard-port"),
    (["--dashboard-port", "0"], "--dashboard-port"),
    (["--dashboard-port", "70000"], "--dashboard-port"),
    (["--headroom-mb", "-1"], "--headroom-mb"),
    (["--name", "a/b"], "--name"),
    (["--gpu", " "], "--gpu"),
    *[([flag, value], flag) for flag in ("--delta", "--alpha", "--headroom-mb", "--cpus-per-trial")
      for value in ("nan", "inf", "-inf")],  # NaN passes every range check; inf too, for some
])
def test_a_bad_flag_is_one_line_naming_it(space, capsys, launched, args, needle):
    import ray
    err = expect_bad_input(search_main, capsys, "--space", str(space), *args)
    assert needle in err and not launched and not ray.is_initialized()


def test_every_bad_flag_is_listed_in_one_error(space, capsys):
    err = expect_bad_input(search_main, capsys, "--space", str(space), "--trials", "0", "--finalists", "0",
                           "--delta", "5")
    assert "--trials" in err and "--finalists" in err and "--delta" in err


def test_flags_left_out_take_the_space_files_values(space, synth_root, synth_cache, tmp_path, launched):
    assert search_main(["--space", str(space), "--name", "a", *_data_flags(synth_root, synth_cache, tmp_path)]) == 0
    sc = launched[-1]
    assert (sc.trials, sc.gpu, sc.headroom_mb, sc.confirm_seeds, sc.confirm_folds, sc.finalists, sc.plan_search) == (
        3, "0.7", 0.0, 3, 2, 4, "measure")
    assert sc.card.usable_bytes == int(0.7 * 2 ** 30) and sc.space.plan_search.mode == "measure"
    assert sc.selection.rule == "noise-aware" and (sc.selection.alpha, sc.selection.delta) == (0.05, 0.02)
    assert sc.num_classes == synth_cache.num_classes and sc.cache_path == synth_cache.path
    assert sc.root == tmp_path / "runs" / "a" and sc.tune_dir() == sc.root / "tune"
    assert sc.confirm_dir() == sc.root / "confirm" and sc.plan_cache_dir() == sc.root / "plans"
    assert sc.storage_url() == f"sqlite:///{(sc.root / 'optuna.db').resolve()}" and sc.study_name() == "a"

    assert search_main(["--space", str(space), "--name", "b", "--trials", "5", "--confirm", "0", "--finalists", "1",
                        "--plan-search", "optuna", "--gpu", "2", "--headroom-mb", "100", "--select", "fastest",
                        *_data_flags(synth_root, synth_cache, tmp_path)]) == 0
    sc = launched[-1]
    assert (sc.trials, sc.confirm_seeds, sc.finalists, sc.plan_search, sc.select) == (5, 0, 1, "optuna", "fastest")
    assert sc.space.plan_search.mode == "optuna" and "batch_size" in [p.name for p in sc.space.optuna_params()]
    assert sc.card.usable_bytes == 2 * 2 ** 30 - 100 * 2 ** 20


def test_resume_reads_the_saved_flags(space, synth_root, synth_cache, tmp_path, launched, capsys):
    flags = _data_flags(synth_root, synth_cache, tmp_path)
    assert search_main(["--space", str(space), "--name", "r", "--trials", "2", "--confirm", "1", *flags]) == 0
    first = launched[-1]
    saved = json.loads(first.args_file().read_text())
    assert not set(saved) & set(PER_RUN_FLAGS) and saved["trials"] == 2 and saved["name"] == "r"
    first.tune_dir().mkdir()  # as if the search had started

    runs = str(tmp_path / "runs")
    assert search_main(["--name", "r", "--storage-path", runs, "--resume", "--dashboard"]) == 0
    resumed = launched[-1]
    assert resumed.resume and resumed.dashboard and (resumed.trials, resumed.confirm_seeds) == (2, 1)
    assert resumed.space_file == space.resolve() and resumed.data == synth_root.resolve()

    # an experiment saved before --alpha/--delta (with the old rule's z and margin) still resumes
    saved.update(z=1.645, margin=0.01)
    first.args_file().write_text(json.dumps(saved))
    assert search_main(["--name", "r", "--storage-path", runs, "--resume"]) == 0
    assert launched[-1].selection.alpha == 0.05

    err = expect_bad_input(search_main, capsys, "--name", "r", "--storage-path", runs, "--resume", "--trials", "9")
    assert "--resume" in err and "--trials" in err  # the experiment's own flag: refused, not ignored
    err = expect_bad_input(search_main, capsys, "--space", str(space), "--name", "r", *flags)
    assert "--name 'r'" in err and "--resume" in err  # an existing experiment is never started over


def test_a_saved_flag_of_the_wrong_type_is_named(space, synth_root, synth_cache, tmp_path, launched, capsys):
    flags = _data_flags(synth_root, synth_cache, tmp_path)
    assert search_main(["--space", str(space), "--name", "t", *flags]) == 0
    sc = launched[-1]
    sc.tune_dir().mkdir()
    saved = json.loads(sc.args_file().read_text())
    sc.args_file().write_text(json.dumps({**saved, "cpus_per_trial": "lots"}))
    err = expect_bad_input(search_main, capsys, "--name", "t", "--storage-path", str(tmp_path / "runs"), "--resume")
    assert "--cpus-per-trial" in err and "lots" in err


def test_construction_validates_every_field(space, synth_root, synth_cache, tmp_path, launched):
    assert search_main(["--space", str(space), "--name", "c", *_data_flags(synth_root, synth_cache, tmp_path)]) == 0
    sc = launched[-1]
    with pytest.raises(SearchConfigError) as e:
        dataclasses.replace(sc, trials=0, alpha=float("nan"), dashboard_port=0)
    assert all(flag in str(e.value) for flag in ("--trials", "--alpha", "--dashboard-port"))
    with pytest.raises(SearchConfigError, match="--plan-search"):  # the space must carry the mode it names
        dataclasses.replace(sc, plan_search="optuna")
    with pytest.raises(SearchConfigError, match="unknown flag"):
        resolve({"space_file": space, "trails": 3})


def test_help_lists_every_flag_with_its_docstring(capsys):
    from asl_ray.config import documented_fields
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    docs = {name: doc for _, name, doc in documented_fields(SearchConfig)}
    fields = flag_fields()
    assert {f.name for f in fields} >= {"trials", "plan_search", "confirm_seeds", "confirm_folds", "finalists",
                                        "select", "alpha", "delta", "resume", "dashboard"}
    for f in fields:
        assert flag_name(f.name) in text and docs[f.name] and docs[f.name] in text, f.name
    assert "--confirm N" in text and "--space PATH" in text and "{measure,optuna}" in text
    assert "--cache-path" not in text and "--card" not in text  # resolved values are no flags
