"""The ``relaxplug`` command line: ``train``, ``eval``, ``demo``, ``compare``, ``attack``, ``groups``, ``list``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

EVAL_COLUMNS = ("guarantee", "certifier", "eps", "norm", "points", "clean_accuracy", "vra", "rejection_rate", "certified_set_sizes", "median_radius", "seconds")
#: ``eval``'s table for IGRP: both radii and both claims (``vra`` is both claims and a correct prediction)
IGRP_EVAL_COLUMNS = ("guarantee", "certifier", "eps_in", "eps_out", "norm", "points", "clean_accuracy", "verified_accuracy_in",
                     "group_verified_accuracy_out", "vra", "rejection_rate", "seconds")


def _known_certifiers() -> list[str]:
    from relaxplug.certifiers import list_certifiers

    _load_optional_certifiers()
    return list_certifiers()


def _load_optional_certifiers() -> None:
    """Register the bound-propagation certifiers (their module imports auto_LiRPA lazily)."""
    try:
        from relaxplug.certifiers import lirpa  # noqa: F401
    except ImportError:
        pass


def _add_common_eval(parser: argparse.ArgumentParser, model_sources: bool = False) -> None:
    if model_sources:
        _add_model_sources(parser)
    else:
        parser.add_argument("--checkpoint", required=True, help="relaxplug checkpoint (.pt)")
    parser.add_argument("--guarantee", default=None, help="standard | rtk:K | affinity[:SETS|FILE] | superclass[:cifar100|FILE] | igrp:FILE.yaml[@EPS_IN,EPS_OUT] (default: the checkpoint's)")
    parser.add_argument("--eps", type=float, default=None, help="radius (default: the checkpoint's training eps)")
    if model_sources:
        parser.add_argument("--norm", default=None, help="2 or inf (default: a RobustBench model's threat model, a checkpoint's training norm, else 2)")
        parser.add_argument("--data", default=None, help="data set name or a local FILE.npz (default: the checkpoint's, or the RobustBench --dataset)")
    else:
        parser.add_argument("--norm", default=None, help="2 or inf (default: the checkpoint's training norm)")
        parser.add_argument("--data", default=None, help="data set name (default: the checkpoint's)")
    parser.add_argument("--data-root", default=None, help="directory holding the data set files")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--limit", type=int, default=None, help="certify only the first N points")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", default=None, help="directory for the JSON results")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_sources(parser: argparse.ArgumentParser) -> None:
    """The model to certify: a relaxplug checkpoint, a RobustBench entry, or a CROWN-IBP / auto_LiRPA net."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="relaxplug checkpoint (.pt)")
    source.add_argument("--robustbench", metavar="NAME", help="RobustBench model, read from MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt")
    source.add_argument("--lirpa-model", metavar="ARCH", help="CROWN-IBP / auto_LiRPA architecture (relaxplug list), with --lirpa-checkpoint and --data")
    parser.add_argument("--dataset", default="cifar10", help="RobustBench data set: cifar10, cifar100, imagenet")
    parser.add_argument("--threat-model", default="Linf", help="RobustBench threat model: Linf, L2, corruptions")
    parser.add_argument("--model-dir", default="./models", help="RobustBench model folder (default ./models)")
    parser.add_argument("--lirpa-checkpoint", metavar="PATH", help="the CROWN-IBP / auto_LiRPA checkpoint (.pth)")
    parser.add_argument("--lirpa-normalize", default="auto", choices=("auto", "none", "cifar10"),
                        help="input normalization put inside the net (auto: the projects' CIFAR-10 one on cifar10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxplug", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train a model from a YAML config")
    p_train.add_argument("config", help="YAML config (see configs/)")
    p_train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p_train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p_train.add_argument("--quiet", action="store_true", help="no progress bars")

    p_repro = sub.add_parser("reproduce", help="train (or resume) configs with a target, certify, compare with the published VRA")
    p_repro.add_argument("configs", nargs="+", help="reproduction configs (configs/*_liresnet*.yaml)")
    p_repro.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of every config (repeatable)")
    p_repro.add_argument("--quiet", action="store_true", help="no progress bars")

    p_eval = sub.add_parser("eval", help="certify a checkpoint on a data set")
    p_eval.add_argument("--certifier", default="gloro", help=f"one of {', '.join(_known_certifiers())}")
    p_eval.add_argument("--lipschitz", choices=("sound", "power"), default="sound", help="gloro: provable bounds (default) or converged power iteration")
    p_eval.add_argument("--spec", choices=("pairwise", "anchor", "logit"), default="pairwise", help="bound propagation: one spec row per needed pair (default, tightest), margins to the top-1 class only (anchor: about top-1 cost) or one row per logit (loosest)")
    p_eval.add_argument("--alpha-iterations", type=int, default=None, metavar="N", help="alpha-crown: slope optimisation steps per bound (default 20)")
    p_eval.add_argument("--radius", type=int, default=0, metavar="STEPS", help="bound propagation: certified radius by STEPS bisection steps on eps per batch (gloro's radius is closed form)")
    _add_common_eval(p_eval, model_sources=True)

    p_demo = sub.add_parser("demo", help="train and certify on the embedded default data")
    p_demo.add_argument("--out", default="out/demo")
    p_demo.add_argument("--epochs", type=int, default=120, help="epochs per digits model")
    p_demo.add_argument("--synthetic-epochs", type=int, default=150)
    p_demo.add_argument("--quiet", action="store_true")

    p_compare = sub.add_parser("compare", help="compare certifiers on one model, guarantee and eps")
    p_compare.add_argument("--certifiers", default="gloro,ibp,crown-ibp,crown", help="comma-separated certifier names; NAME:MODE picks a spec mode, e.g. crown-ibp:anchor")
    _add_common_eval(p_compare, model_sources=True)

    p_attack = sub.add_parser(
        "attack",
        help="attack each point's relaxed guarantee (empirical robust accuracy); with a certifier, try to break its certificates",
    )
    p_attack.add_argument("--certifier", default="gloro", help="certifier whose certificates are attacked, or 'none' to attack only")
    p_attack.add_argument("--steps", type=int, default=50, help="PGD steps per restart")
    p_attack.add_argument("--restarts", type=int, default=2, help="PGD restarts (the first starts at the clean point)")
    p_attack.add_argument("--targets", type=int, default=3, help="opponent classes attacked per acceptable set")
    p_attack.add_argument("--seed", type=int, default=0)
    p_attack.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack (run for the standard guarantee)")
    p_attack.add_argument("--autoattack-fast", action="store_true", help="AutoAttack's APGD-CE and APGD-T only")
    _add_common_eval(p_attack)

    p_groups = sub.add_parser(
        "groups", help="IGRP label groups: cluster a (naturally trained) checkpoint's logit-layer weights"
    )
    p_groups.add_argument("--checkpoint", required=True, help="relaxplug checkpoint (.pt), e.g. of a 'method: natural' run")
    p_groups.add_argument("--n-groups", type=int, required=True, help="number of groups")
    p_groups.add_argument("--linkage", default="average", help="average | complete | single | weighted | ward")
    p_groups.add_argument("--metric", default="cosine", help="cosine | euclidean | correlation (distance between weight rows)")
    p_groups.add_argument("--out", default=None, help="directory for groups.yaml and similarity.png (default: the checkpoint's)")

    sub.add_parser("list", help="list guarantees, certifiers, architectures and data sets")
    return parser


def _load_for_eval(args: argparse.Namespace):
    """``(loaded checkpoint, guarantee, spec string, eps, dataset, device)`` for ``eval``/``compare``."""
    from relaxplug.attacks.robustness import checkpoint_norm, load_evaluation

    if getattr(args, "robustbench", None) or getattr(args, "lirpa_model", None):
        from relaxplug.evaluation.sources import load_zoo_evaluation, norm_name

        loaded = load_zoo_evaluation(
            robustbench=args.robustbench, dataset=args.dataset, threat_model=args.threat_model,
            model_dir=args.model_dir, lirpa_model=args.lirpa_model, lirpa_checkpoint=args.lirpa_checkpoint,
            lirpa_normalize=args.lirpa_normalize, guarantee=args.guarantee, eps=args.eps, data=args.data,
            data_root=args.data_root, split=args.split, device=args.device,
        )
        args.norm = args.norm or norm_name(loaded[0].norm) or "2"
        print(f"model: {loaded[0].source} {loaded[0].name} ({loaded[0].path}), eps={loaded[3]:g}, L{args.norm}")
        return loaded
    loaded = load_evaluation(
        args.checkpoint, args.guarantee, args.eps, data=args.data, data_root=args.data_root,
        split=args.split, device=args.device,
    )
    if args.norm is None:
        args.norm = checkpoint_norm(loaded[0].metadata)
    return loaded


def _model_file(args: argparse.Namespace, loaded) -> Path:
    """The checkpoint certified: ``--checkpoint``, or the zoo model's file."""
    return Path(args.checkpoint) if args.checkpoint else Path(loaded.path)


def _cmd_eval(args: argparse.Namespace) -> int:
    from relaxplug.evaluation.dataset import certify_dataset
    from relaxplug.evaluation.metrics import summarize
    from relaxplug.evaluation.report import format_table, write_json

    _load_optional_certifiers()
    loaded, guarantee, spec, eps, dataset, device = _load_for_eval(args)
    if args.certifier == "gloro":
        options = {"lipschitz": args.lipschitz}
    else:
        options = {"spec": args.spec, "radius_bisection": args.radius}
        if args.alpha_iterations is not None:
            if args.certifier != "alpha-crown":
                raise ValueError("--alpha-iterations applies to --certifier alpha-crown only")
            options["iterations"] = args.alpha_iterations
    cert, logits, labels = certify_dataset(
        loaded.model, dataset, eps, args.norm, args.certifier, guarantee, args.batch_size, device,
        limit=args.limit, progress=not args.quiet, **options,
    )
    record = summarize(cert, logits, labels)
    record["guarantee"] = spec
    record["checkpoint"] = str(_model_file(args, loaded))
    print(format_table([record], IGRP_EVAL_COLUMNS if "eps_out" in record else EVAL_COLUMNS))
    out_dir = Path(args.out) if args.out else _model_file(args, loaded).parent
    path = write_json(out_dir / "eval.json", record)
    print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from relaxplug.evaluation.compare import compare_certifiers, format_table, save

    _load_optional_certifiers()
    loaded, guarantee, spec, eps, dataset, device = _load_for_eval(args)
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    x, y = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    names = tuple(n.strip() for n in args.certifiers.split(",") if n.strip())
    result = compare_certifiers(
        loaded.model, x.to(device), y.to(device), guarantee, eps, args.norm, names, batch_size=args.batch_size, progress=not args.quiet,
    )
    print(format_table(result))
    out_dir = Path(args.out) if args.out else _model_file(args, loaded).parent / "compare"
    save(result, out_dir)
    print(f"wrote {out_dir}")
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from relaxplug.attacks.robustness import attack_main

    _load_optional_certifiers()
    return attack_main(
        args.checkpoint, args.guarantee, args.eps, args.norm, args.certifier, limit=args.limit, steps=args.steps,
        restarts=args.restarts, out_dir=args.out, device=args.device, autoattack=not args.no_autoattack,
        autoattack_fast=args.autoattack_fast, targets=args.targets, data=args.data, data_root=args.data_root,
        split=args.split, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from relaxplug.training.config import load_config
    from relaxplug.training.trainer import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=not args.no_resume, progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    print(f"trained {config.name}: {last}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from relaxplug.training.reproduce import format_table, reproduce

    print(format_table(reproduce(args.configs, args.overrides, progress=not args.quiet)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from relaxplug.demo import run_demo

    run_demo(args.out, epochs=args.epochs, synthetic_epochs=args.synthetic_epochs, progress=not args.quiet)
    return 0


def _cmd_groups(args: argparse.Namespace) -> int:
    from relaxplug.groups import format_groups, groups_from_checkpoint

    grouping, yaml_path, png_path, names = groups_from_checkpoint(
        args.checkpoint, args.n_groups, args.linkage, args.metric, args.out
    )
    print(f"{len(grouping.groups)} groups ({grouping.linkage} linkage, {grouping.metric} distance of logit-layer rows):")
    print(format_groups(grouping.groups, names))
    print(f"wrote {yaml_path} (use as affinity:{yaml_path} or igrp:{yaml_path}@EPS_IN,EPS_OUT)")
    print(f"wrote {png_path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from relaxplug.adapters import list_guarantees
    from relaxplug.data import list_datasets
    from relaxplug.models.architectures import list_architectures

    print("guarantees:    ", ", ".join(list_guarantees()))
    print("certifiers:    ", ", ".join(_known_certifiers()))
    print("architectures: ", ", ".join(list_architectures()))
    print("data sets:     ", ", ".join(list_datasets()))
    from relaxplug.data import GROUPINGS
    from relaxplug.zoo import list_lirpa_architectures

    print("groupings:     ", ", ".join(f"affinity:{name}" for name in GROUPINGS))
    print("--lirpa-model: ", ", ".join(list_lirpa_architectures()))
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo, "compare": _cmd_compare, "attack": _cmd_attack, "groups": _cmd_groups, "list": _cmd_list, "reproduce": _cmd_reproduce}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
