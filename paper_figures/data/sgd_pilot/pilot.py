"""SGD learning-rate pilot for the exploratory ``mechanism`` grid of ``bandpo.experiments.testbed`` (seeds 2000 and
2001, outside every grid), run before the grid; its results are ``pilot.json`` beside this file.

    python paper_figures/data/sgd_pilot/pilot.py OUT_FOLDER

Criterion, fixed before looking: the SGD learning rate whose clip runs end (kl_ref averaged over the last 20 RL
steps) closest to AdamW clip's on a log scale, averaged over the pilot seeds, among runs that stay finite; that is,
the SGD step that moves the policy as far from its warm-start as AdamW's does. Candidates 0.003, 0.01, 0.03, 0.1,
0.3 (run in the order of RATES; the pilot was stopped once no remaining run could change the choice: pilot.json
says which were not run).
"""
import csv
import json
import sys
from pathlib import Path

from bandpo.training import pinning

pinning.reexec_pinned()
from bandpo.training.config import load_config, preset_path  # noqa: E402
from bandpo.training.launch import run  # noqa: E402

RATES = (("adamw", 3e-4), ("sgd", 0.03), ("sgd", 0.1), ("sgd", 0.3), ("sgd", 0.01), ("sgd", 0.003))

out = Path(sys.argv[1])
res = {}
for seed in (2000, 2001):
    for opt, lr in RATES:
        ov = {"trainer.seed": seed, "loss.method": "clip", "task.middle_freq": 0.35, "trainer.progress_bar": False}
        if opt == "sgd":
            ov.update({"optim.optimizer": "sgd", "optim.lr": lr})
        d = out / f"{opt}-{lr}-seed{seed}"
        run(load_config(preset_path("testbed"), ov), d, warmstart_cache=out / ".warmstart")
        rows = list(csv.DictReader(open(d / "metrics.csv")))
        kl = [float(r["kl_ref"]) for r in rows if r.get("kl_ref")][-20:]
        reward = [float(r["reward/mean"]) for r in rows if r.get("reward/mean")]
        res[d.name] = {"kl_ref_last20": sum(kl) / len(kl), "reward_first20": sum(reward[:20]) / 20,
                       "reward_last20": sum(reward[-20:]) / 20}
        print(json.dumps({d.name: res[d.name]}), flush=True)
