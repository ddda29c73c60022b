"""A tiny fit run as a script (Lightning's "ddp" launcher re-runs this file for each rank).

    python tests/_ddp_fit.py OUT_DIR DEVICES [--fault-rank R]

Writes OUT_DIR/result.json from rank 0: the saliency scalars of every evaluation (from
``metrics.csv``), the monitor's state and the run's global step.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from saliency_monitor import SaliencyMonitor
from tests._fits import ArmFaults, Classifier, InjectedFault, is_saliency_key, multiclass_loaders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("devices", type=int)
    parser.add_argument("--fault-rank", type=int, default=None)
    parser.add_argument("--fault-at-fit-start", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    model = Classifier()
    if args.fault_rank is not None:
        model.net.stage2.append(InjectedFault(args.fault_rank, armed=args.fault_at_fit_start))
    monitor = SaliencyMonitor(num_train_probes=5, num_val_probes=3, meta_lr=0.05, num_logged_images=1)
    logger = CSVLogger(args.out, name="run", version=0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        logger=logger, callbacks=[monitor, ArmFaults()], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
    )
    train, val = multiclass_loaders()
    trainer.fit(model, train, val)
    if trainer.is_global_zero:
        logger.save()
        with open(Path(logger.log_dir) / "metrics.csv") as handle:
            rows = [{k: float(v) for k, v in row.items() if v != "" and (is_saliency_key(k) or k == "step")}
                    for row in csv.DictReader(handle)]
        state = monitor.state_dict()
        result = {
            "evaluations": [row for row in rows if "saliency_run/errors" in row],
            "identities": state["identities"],
            "global_step": trainer.global_step,
            "errors": state["errors"],
            "pictures": sorted(str(p.relative_to(logger.log_dir)) for p in Path(logger.log_dir).rglob("*.png")),
        }
        (Path(args.out) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
