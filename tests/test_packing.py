"""Packing trials onto one GPU (asl_ray/search/packing.py): the shares' arithmetic, the cap on trials at once, and
how --pack / the space's `concurrency: auto` reach the SearchConfig. No Ray; seconds."""
import random

import pytest
import yaml
from conftest import expect_bad_input, write_search_space

from asl_ray.cards import CUDA_CONTEXT_BYTES, MiB
from asl_ray.search import packing, session
from asl_ray.search.__main__ import main as search_main
from asl_ray.search.config import resolve
from asl_ray.search.packing import (
    GRID,
    Share,
    fits_together,
    max_concurrent,
    predicted_need,
    share_for,
    units_for,
)

CARD = 11 * 1024 * MiB


def test_a_share_is_rounded_up_to_the_grid_and_holds_its_prediction():
    assert units_for(CARD // 4, CARD) == GRID // 4  # exact: no rounding
    assert units_for(CARD // 4 + 1, CARD) == GRID // 4 + 1  # a byte over: the next unit
    assert units_for(0, CARD) == 1 and units_for(2 * CARD, CARD) == GRID  # at least one unit, at most the card
    rng = random.Random(0)
    for _ in range(2000):
        need = rng.randrange(1, CARD + 1)
        share = share_for(need, CARD)
        assert share.bytes >= need and share.fraction == share.units / GRID
        assert share.units == 1 or (share.units - 1) * CARD < need * GRID  # the smallest such unit count
    assert share_for(None, CARD).units == GRID  # unknown need: the whole card


def test_shares_that_fit_together_never_put_more_predicted_memory_on_the_card_than_it_allows():
    """Whatever set of predictions Ray packs (their fractions summing within 1 GPU), their predicted needs and their
    allocator caps sum within the card's usable memory."""
    rng = random.Random(1)
    for _ in range(2000):
        needs = [rng.randrange(CUDA_CONTEXT_BYTES, CARD // rng.choice([1, 2, 3, 5])) for _ in range(rng.randint(1, 6))]
        shares = [share_for(n, CARD) for n in needs]
        if fits_together(shares):
            assert sum(needs) <= sum(s.bytes for s in shares) <= CARD
            assert sum(s.fraction for s in shares) <= 1.0 + 1e-9


def test_packing_allows_what_fits_and_not_what_does_not():
    small, big = share_for(int(0.4 * CARD), CARD), share_for(int(0.65 * CARD), CARD)
    assert fits_together([small, small]) and not fits_together([small, small, small])
    assert not fits_together([small, big]) and fits_together([big])  # too large to share: it runs alone


def test_a_trials_need_is_its_largest_fitting_plan():
    verdicts = {"a": (True, 300), "b": (True, 900), "c": (False, 5000)}
    assert predicted_need(["a", "b", "c"], verdicts.get) == 900
    assert predicted_need(["c"], verdicts.get) is None


def test_the_cap_on_trials_at_once():
    per_gpu = GRID // units_for(CUDA_CONTEXT_BYTES, CARD)  # no trial needs less than its own CUDA context
    assert max_concurrent(100, 1, CARD) == per_gpu and max_concurrent(100, 2, CARD) == 2 * per_gpu
    assert max_concurrent(3, 1, CARD) == 3  # never more than the trials
    assert max_concurrent(100, 1, CARD, concurrency=4) == 4 and max_concurrent(2, 1, CARD, concurrency=4) == 2


@pytest.mark.parametrize("bad", [{"units": 0, "card_usable_bytes": CARD}, {"units": GRID + 1, "card_usable_bytes": CARD},
                                 {"units": 1, "card_usable_bytes": 0}])
def test_a_share_outside_the_card_is_refused(bad):
    with pytest.raises(ValueError):
        Share(**bad)


def _space_with(tmp_path, **top):
    path = write_search_space(tmp_path / "space.yaml")
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, **top}))
    return path


def test_pack_flag_and_the_spaces_concurrency_auto(tmp_path):
    plain, auto = write_search_space(tmp_path / "plain.yaml"), _space_with(tmp_path, concurrency="auto")
    assert not resolve({"space_file": plain}).pack and resolve({"space_file": plain, "pack": True}).pack
    assert resolve({"space_file": auto}).pack
    assert not resolve({"space_file": auto, "pack": False}).pack  # --no-pack wins over the file


@pytest.mark.parametrize("value", [4, "yes", True, [1]])
def test_a_bad_concurrency_in_the_space_is_one_line_naming_file_and_key(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "run_search", lambda sc, *a: pytest.fail("launched"))
    space = _space_with(tmp_path, concurrency=value)
    err = expect_bad_input(search_main, capsys, "--space", str(space))
    assert str(space) in err and "concurrency: must be auto" in err


def test_packing_module_is_ray_free():
    import ast
    tree = ast.parse(open(packing.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert "ray" not in imported
