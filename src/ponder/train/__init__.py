"""Training: typed configs, run directories, checkpoints, the trainer.

    cfg = ponder.train.load_config("configs/demo/anira_o.yaml", ["train.steps=200"])
    ponder.train.validate_names(cfg)
    ponder.train.train(cfg, "runs/x")       # resumable: rerun the same command after a kill

These are the names apps (``ponder.apps``) may use; the modules below hold the rest.
"""

from ponder._exports import lazy_exports

_HOMES = {
    "SHIPPED_CONFIGS": "ponder.train.config",
    "TrainConfig": "ponder.train.config",
    "configs_dir": "ponder.train.config",
    "load_config": "ponder.train.config",
    "validate_names": "ponder.train.config",
    "train": "ponder.train.trainer",
    "CONFIG_FILE": "ponder.train.rundir",
    "read_run_config": "ponder.train.rundir",
    "atomic_write_bytes": "ponder.train.checkpoint",
    "atomic_write_text": "ponder.train.checkpoint",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
