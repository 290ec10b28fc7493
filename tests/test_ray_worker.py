"""The loop inside a real Ray Train TorchTrainer: metrics and a checkpoint per epoch, and resume."""
import pytest

from conftest import tiny_config

pytestmark = pytest.mark.slow


def test_torch_trainer_reports_metrics_and_checkpoints_then_resumes(ray_local, synth_cache, tmp_path):
    from asl_ray.train.checkpoint import load_checkpoint
    from asl_ray.train.worker import make_trainer, worker_loop_config

    cfg = tiny_config(epochs=2, max_steps_per_epoch=2, dim=32)
    trainer = make_trainer(worker_loop_config(cfg, synth_cache.path), name="t", storage_path=str(tmp_path),
                           use_gpu=False)
    result = trainer.fit()
    assert result.error is None
    assert result.metrics["epoch"] == 1 and result.metrics["feasible"] is True
    assert 0.0 <= result.metrics["val_acc"] <= 1.0 and result.metrics["samples_per_s"] > 0
    with result.checkpoint.as_directory() as d:
        assert load_checkpoint(d)["epoch"] == 1

    # Same name and storage: Train V2 restores the run from its latest checkpoint.
    longer = tiny_config(epochs=3, max_steps_per_epoch=2, dim=32)
    resumed = make_trainer(worker_loop_config(longer, synth_cache.path), name="t", storage_path=str(tmp_path),
                           use_gpu=False).fit()
    assert resumed.error is None
    assert resumed.metrics["epoch"] == 2
    assert resumed.metrics["optimizer_steps"] == 3 * result.metrics["optimizer_steps"] // 2


def test_oom_in_a_worker_ends_the_run_normally_with_an_infeasible_report(ray_local, synth_cache, tmp_path, inject):
    from asl_ray.train.worker import make_trainer, worker_loop_config

    inject({"oom_at_step": 1})  # the Ray worker reads the rules file too
    cfg = tiny_config(epochs=2, max_steps_per_epoch=2, dim=32)
    result = make_trainer(worker_loop_config(cfg, synth_cache.path), name="oom", storage_path=str(tmp_path),
                          use_gpu=False).fit()
    assert result.error is None  # no traceback: the trial ended normally
    assert result.checkpoint is None  # nothing trained, nothing saved


def test_killed_worker_restarts_from_its_checkpoint_without_double_counting(ray_local, synth_cache, tmp_path,
                                                                              inject):
    from asl_ray.train.worker import make_trainer, worker_loop_config

    inject({"kill_at_epoch": 1})
    cfg = tiny_config(epochs=3, max_steps_per_epoch=2, dim=32)
    result = make_trainer(worker_loop_config(cfg, synth_cache.path), name="killed", storage_path=str(tmp_path),
                          use_gpu=False, max_failures=1).fit()
    assert result.error is None and result.metrics["epoch"] == 2
    # Epoch 0 ran before the kill, epochs 1-2 after the restart from epoch 0's checkpoint.
    assert result.metrics["optimizer_steps"] == 3 * 2
    from asl_ray.train.checkpoint import load_checkpoint
    with result.checkpoint.as_directory() as d:
        assert [h["epoch"] for h in load_checkpoint(d)["history"]] == [0, 1, 2]
