"""MGD3: mode-guided vs unguided diffusion sampling vs random real images, IPC 1 and 10 (digits, MNIST, ...).

    python benchmarks/experiments/mgd3_results.py [--dataset digits] [--model models/digits-ddpm] [--train-steps 1500]
        [--device cpu] [--ipcs 1,10] [--num-eval 5] [--gen-seeds 1] [--eval-epochs 300] [--lambdas 0.1,1]
        [--t-stops 0.5,0.8]

Trains the small class-conditional UNet with ``train-diffusion`` when ``--model`` does not hold one yet
(resumable), generates the synthetic sets with the same seeds and sampler for the guided and unguided runs,
evaluates them under the common protocol (``pydistill.evaluate.evaluate``: ConvNet, SGD lr 0.01 momentum 0.9,
fresh networks per evaluation) and writes ``benchmarks/results/mgd3-digits-<device>-<date>.{md,json}`` with
accuracies, generation time and the coverage / diversity measures. Rows: random real, unguided sampling, the
k-means modes themselves used as images, and MGD3 at the paper's lambda 0.1 / t_stop 0.5 and at the dataset's
preset (``Config.for_dataset``); ``--lambdas`` / ``--t-stops`` give a grid instead (all rows are reported,
nothing is dropped). ``--gen-seeds G`` generates G synthetic
sets per row (sampler seeds ``seed .. seed + G - 1``; random real: G draws) and pools the ``G x num_eval``
accuracies: at IPC 1 the one image per class is itself a random draw, so one set says little.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import RESULTS, environment  # noqa: E402


def _generate(method_cls, ds, ipc, cfg, seed, device):
    m = method_cls(ds, ipc, config=cfg, device=device, seed=seed)
    t0 = time.perf_counter()
    for it in range(m.num_iterations):
        m.step(it)
    return m.synthetic_set(), time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default=None, help="diffusion model folder (default models/<dataset>-ddpm)")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ipcs", default="1,10")
    p.add_argument("--num-eval", type=int, default=5)
    p.add_argument("--gen-seeds", type=int, default=1, help="synthetic sets per row (accuracies pooled)")
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--dsa", action="store_true", help="evaluate with DSA augmentation (default: off)")
    p.add_argument(
        "--model-kwargs",
        default=None,
        metavar="JSON",
        help="evaluation ConvNet keywords, e.g. '{\"width\": 32}' (default: the dataset default)",
    )
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument("--scheduler", default=None, choices=("ddpm", "ddim"), help="default: MGD3 Config (ddpm)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG (default: MGD3 Config for digits)")
    p.add_argument(
        "--lambdas",
        default=None,
        help="comma list; with --t-stops a grid of MGD3 rows (default: two rows, the paper's lambda 0.1 "
        "/ t_stop 0.5 and the dataset preset of MGD3 Config.for_dataset)",
    )
    p.add_argument("--t-stops", default=None)
    p.add_argument(
        "--no-mode-images",
        action="store_true",
        help="skip the baseline row that trains on the k-means centres (the modes) themselves",
    )
    p.add_argument("--oversamples", default="1", help="MGD3 mode_oversample values (1 = the paper's k-means)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)

    from pydistill.data import load_dataset
    from pydistill.diffusion.train import train_diffusion
    from pydistill.evaluate import evaluate, evaluate_baseline, random_subset_indices
    from pydistill.methods.mgd3 import MGD3, Config, coverage_and_diversity
    from pydistill.synthetic import SyntheticSet

    if args.gen_seeds < 1:
        raise ValueError(f"--gen-seeds must be >= 1, got {args.gen_seeds}")
    if args.model is None:
        args.model = os.path.join("models", f"{args.dataset}-ddpm")
    preset, paper = Config.for_dataset(args.dataset), Config()
    args.scheduler = args.scheduler or preset.scheduler
    if not os.path.isfile(os.path.join(args.model, "pydistill.json")):
        t0 = time.perf_counter()
        train_diffusion(
            args.dataset,
            args.model,
            steps=args.train_steps,
            device=args.device,
            seed=args.seed,
            data_root=args.data_root,
        )
        print(f"trained {args.model} in {time.perf_counter() - t0:.0f} s")
    model_meta = json.load(open(os.path.join(args.model, "pydistill.json")))
    ds = load_dataset(args.dataset, args.data_root, device=args.device)
    ev = dict(
        num_eval=args.num_eval,
        epochs=args.eval_epochs,
        dsa=args.dsa,
        seed=args.seed,
        progress=False,
        model_kwargs=json.loads(args.model_kwargs) if args.model_kwargs else None,
    )
    seeds = [args.seed + j for j in range(args.gen_seeds)]
    if args.lambdas is None and args.t_stops is None:  # the paper's setting, then the dataset preset if it differs
        settings = list(dict.fromkeys([(paper.lambda_, paper.t_stop), (preset.lambda_, preset.t_stop)]))
    else:
        lams = [float(v) for v in (args.lambdas or str(preset.lambda_)).split(",")]
        stops = [float(v) for v in (args.t_stops or str(preset.t_stop)).split(",")]
        settings = [(lam, ts) for lam in lams for ts in stops]
    rows = []

    def add(ipc, name, accs, gen_s=None, syns=(), covs=None, **extra):
        """One table row from the pooled accuracies of every set (``syns``: the generated sets, if any)."""
        t = torch.tensor(accs, dtype=torch.float64)
        row = {
            "ipc": ipc,
            "method": name,
            "acc_mean": t.mean().item(),
            "acc_std": t.std(correction=0).item(),  # population std, as evaluate()
            "accs": list(accs),
            "sets": max(len(syns), 1),
            "gen_time_s": gen_s,
            **extra,
        }
        if covs is None:
            covs = [(s.meta["mode_distance"], s.meta["diversity"]) for s in syns]
        if covs:
            row["mode_distance"] = sum(c for c, _ in covs) / len(covs)
            row["diversity"] = sum(d for _, d in covs) / len(covs)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "accs"}))

    def generated(ipc, cfg):
        """(pooled accuracies, mean generation seconds, sets) over the sampler seeds."""
        accs, times, syns = [], [], []
        for s in seeds:
            syn, gen_s = _generate(MGD3, ds, ipc, cfg, s, args.device)
            accs += evaluate(syn, ds, **{**ev, "seed": s})["ConvNet"]["accs"]
            times.append(gen_s)
            syns.append(syn)
        return accs, sum(times) / len(times), syns

    for ipc in [int(v) for v in args.ipcs.split(",")]:
        # random real: a new draw per evaluated network (G x num_eval of them); its measures from the first G draws
        acc = evaluate_baseline(ds, "random", ipc, **{**ev, "num_eval": args.num_eval * args.gen_seeds})
        covs = []
        for draw in range(len(seeds)):
            sel = random_subset_indices(ds, ipc, args.seed, draw)  # class-major, ipc per class
            covs += [
                coverage_and_diversity(ds.x_train[ds.indices_by_class[c]], ds.x_train[sel[c * ipc : (c + 1) * ipc]])
                for c in range(ds.num_classes)
            ]  # add() averages over draws x classes (equal counts)
        add(ipc, "random real", acc["ConvNet"]["accs"], covs=covs)
        base = Config.for_dataset(args.dataset, ipc)
        base.model, base.num_inference_steps, base.scheduler = args.model, args.steps, args.scheduler
        if args.guidance_scale is not None:
            base.guidance_scale = args.guidance_scale
        cfg = Config(**{**base.__dict__, "guided": False})
        accs, gen_s, syns = generated(ipc, cfg)
        add(ipc, "unguided diffusion", accs, gen_s, syns, guidance_scale=cfg.guidance_scale)
        if not args.no_mode_images:
            # the modes themselves as the synthetic images (k-means is seeded: one set; accuracies over G x nets)
            m = MGD3(ds, ipc, config=base, device=args.device, seed=args.seed)
            imgs = torch.cat([m.mode_images(c) for c in range(ds.num_classes)])
            modes_set = SyntheticSet(imgs, m.labels.clone(), None, {})
            accs = evaluate(modes_set, ds, **{**ev, "num_eval": args.num_eval * args.gen_seeds})["ConvNet"]["accs"]
            per_class = [
                coverage_and_diversity(ds.x_train[ds.indices_by_class[c]], imgs[c * ipc : (c + 1) * ipc])
                for c in range(ds.num_classes)
            ]
            add(ipc, "k-means modes as images", accs, covs=per_class)
        for lam, ts in settings:
            for r in [int(v) for v in args.oversamples.split(",")]:
                cfg = Config(**{**base.__dict__, "lambda_": lam, "t_stop": ts, "mode_oversample": r})
                accs, gen_s, syns = generated(ipc, cfg)
                add(
                    ipc,
                    "MGD3" if r == 1 else f"MGD3, densest of {r}x modes",
                    accs,
                    gen_s,
                    syns,
                    lambda_=lam,
                    t_stop=ts,
                    guidance_scale=cfg.guidance_scale,
                    mode_oversample=r,
                )

    env = environment(args.device)
    info = {
        "env": env,
        "model": args.model,
        "model_meta": {k: model_meta.get(k) for k in ("steps", "final_loss", "train_time_s", "image_size")},
        "eval": ev,
        "sampler": {"scheduler": args.scheduler, "steps": args.steps},
        "gen_seeds": seeds,
        "rows": rows,
    }
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(
        RESULTS,
        f"mgd3-{args.dataset}-{env['device'].replace(' ', '_')}-{datetime.date.today()}"
        + (f"-{args.tag}" if args.tag else ""),
    )
    with open(stem + ".json", "w") as f:
        json.dump(info, f, indent=1)
    lines = [
        f"# MGD3 on {args.dataset} ({env['device']}, torch {env['torch']}, {env['date']})",
        "",
        f"Diffusion model: `{args.model}` (class-conditional UNet2DModel, {model_meta.get('steps')} training steps, "
        f"{model_meta.get('train_time_s', 0):.0f} s). Sampler: {args.scheduler}, {args.steps} steps. Evaluation: "
        f"ConvNet {ev['model_kwargs'] or '(dataset default)'}, {args.num_eval} networks x {args.eval_epochs} epochs "
        f"per synthetic set, {len(seeds)} set(s) per row "
        f"(sampler seeds {seeds}; random real: {args.num_eval * len(seeds)} draws), accuracies pooled; DSA "
        f"{'on' if args.dsa else 'off'}; accuracy on the {ds.x_test.shape[0]} held-out {args.dataset} test images.",
        "",
        "mode distance = mean over real images of a class of the L2 distance (normalized pixels) to the nearest "
        "synthetic image of that class (lower = better coverage); diversity = mean pairwise L2 distance within a "
        "class.",
        "",
        "| IPC | method | lambda | t_stop | CFG | acc (%) | mode distance | diversity | generation s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['ipc']} | {r['method']} | {f(r.get('lambda_'), 'g')} | {f(r.get('t_stop'), 'g')} | "
            f"{f(r.get('guidance_scale'), 'g')} | {100 * r['acc_mean']:.1f} +- {100 * r['acc_std']:.1f} | "
            f"{f(r.get('mode_distance'), '.3f')} | {f(r.get('diversity'), '.3f')} | "
            f"{f(r.get('gen_time_s'), '.1f')} |"
        )
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("recorded", stem + ".md")
    return rows


if __name__ == "__main__":
    main()
