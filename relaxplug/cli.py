"""The ``relaxplug`` command line: ``train``, ``eval``, ``demo``, ``compare``, ``attack``, ``groups``, ``list``.

Errors are one line on stderr naming the cause, never a traceback (``-v`` adds it): exit code
2 for a usage error (arguments, config or input files that are wrong, an output path that
cannot be used), 1 for a failure while working (a write that fails, a run holding the output
directory, training that diverged, nothing measured, an internal error), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import NoReturn, Sequence

from relaxplug.errors import RunFailure
from relaxplug.outputs import check_output_dir

__all__ = ["main", "build_parser"]

USAGE_ERROR = 2
FAILURE = 1
DESCRIPTION = """Certify, train and attack relaxed robustness guarantees (see docs/cli.md).

Errors are one line on stderr; -v shows the traceback. Exit codes: 0 success, 2 usage error
(arguments, config or input files, an unusable output path), 1 failure while working (a
failed write, an output directory in use, diverged training, nothing measured), 130 interrupted."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (exit code 2) that point at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relaxplug")
    except PackageNotFoundError:
        from relaxplug import __version__

        return __version__


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite radius >= 0, got {text!r}")
    return value


def _norm(text: str) -> str:
    """``--norm``: parsed by :class:`~relaxplug.norms.Norm`, the one parser (only L2 and Linf are certified)."""
    from relaxplug.norms import Norm

    try:
        return Norm(text).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    from relaxplug.runtime import parse_device

    try:
        return parse_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _certifier(text: str, allow_none: bool = False) -> str:
    """A registered certifier name, optionally ``NAME:MODE`` (a bound-propagation spec mode)."""
    name = text.strip().lower()
    if allow_none and name == "none":
        return name
    known = _known_certifiers()
    if name.partition(":")[0] not in known:
        raise argparse.ArgumentTypeError(f"unknown certifier {text!r}; known: {', '.join(known)}")
    return name


def _certifier_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("no certifier named")
    return tuple(_certifier(n) for n in names)

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
    import importlib.util

    if importlib.util.find_spec("auto_LiRPA") is not None:  # only auto_LiRPA's absence is tolerated
        from relaxplug.certifiers import lirpa  # noqa: F401


def _add_common_eval(parser: argparse.ArgumentParser, model_sources: bool = False) -> None:
    if model_sources:
        _add_model_sources(parser)
    else:
        parser.add_argument("--checkpoint", required=True, help="relaxplug checkpoint (.pt)")
    parser.add_argument("--guarantee", default=None, help="standard | rtk:K | affinity[:SETS|FILE] | superclass[:cifar100|FILE] | igrp:FILE.yaml[@EPS_IN,EPS_OUT] (default: the checkpoint's)")
    parser.add_argument("--eps", type=_eps, default=None, help="radius (default: the checkpoint's training eps)")
    if model_sources:
        parser.add_argument("--norm", type=_norm, default=None, help="2 or inf (default: a RobustBench model's threat model, a checkpoint's training norm, else 2)")
    else:
        parser.add_argument("--norm", type=_norm, default=None, help="2 or inf (default: the checkpoint's training norm)")
    parser.add_argument("--data", default=None, help="data set name or a local FILE.npz (default: the checkpoint's, or the RobustBench --dataset)")
    parser.add_argument("--data-root", default=None, help="directory holding the data set files")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--limit", type=_positive_int, default=None, help="certify only the first N points")
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", default=None, help="directory for the JSON results (checked before any work)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_sources(parser: argparse.ArgumentParser) -> None:
    """The model to certify: a relaxplug checkpoint, a RobustBench entry, or a CROWN-IBP / auto_LiRPA net."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="relaxplug checkpoint (.pt)")
    source.add_argument("--robustbench", metavar="NAME", help="RobustBench model, read from MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt")
    source.add_argument("--lirpa-model", metavar="ARCH", help="CROWN-IBP / auto_LiRPA architecture (relaxplug list), with --lirpa-checkpoint and --data")
    # None = not given: a zoo-only option given with another source is an error, not ignored
    parser.add_argument("--dataset", default=None, help="RobustBench data set: cifar10 (default), cifar100, imagenet")
    parser.add_argument("--threat-model", default=None, help="RobustBench threat model: Linf (default), L2, corruptions")
    parser.add_argument("--model-dir", default=None, help="RobustBench model folder (default ./models)")
    parser.add_argument("--lirpa-checkpoint", metavar="PATH", help="the CROWN-IBP / auto_LiRPA checkpoint (.pth)")
    parser.add_argument("--lirpa-normalize", default=None, choices=("auto", "none", "cifar10"),
                        help="input normalization put inside the net (default auto: the projects' CIFAR-10 one on cifar10)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relaxplug", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"relaxplug {_version()}")
    # -v is accepted after the subcommand too; SUPPRESS keeps an absent one from resetting it
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress details; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    add_parser = sub.add_parser

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return add_parser(name, parents=[verbose], **kwargs)

    sub.add_parser = add  # type: ignore[method-assign]

    p_train = sub.add_parser("train", help="train a model from a YAML config")
    p_train.add_argument("config", help="YAML config (see configs/)")
    p_train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p_train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p_train.add_argument("--device", type=_device, default=None, help="auto | cpu | cuda | cuda:N (overrides the config's device:)")
    p_train.add_argument("--quiet", action="store_true", help="no progress bars")

    p_repro = sub.add_parser("reproduce", help="train (or resume) configs with a target, certify, compare with the published VRA")
    p_repro.add_argument("configs", nargs="+", help="reproduction configs (configs/*_liresnet*.yaml)")
    p_repro.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of every config (repeatable)")
    p_repro.add_argument("--quiet", action="store_true", help="no progress bars")

    p_eval = sub.add_parser("eval", help="certify a checkpoint on a data set")
    p_eval.add_argument("--certifier", type=_certifier, default="gloro", help=f"one of {', '.join(_known_certifiers())}")
    p_eval.add_argument("--lipschitz", choices=("sound", "power"), default="sound", help="gloro: provable bounds (default) or converged power iteration")
    p_eval.add_argument("--spec", choices=("pairwise", "anchor", "logit"), default="pairwise", help="bound propagation: one spec row per needed pair (default, tightest), margins to the top-1 class only (anchor: about top-1 cost) or one row per logit (loosest)")
    p_eval.add_argument("--alpha-iterations", type=_positive_int, default=None, metavar="N", help="alpha-crown: slope optimisation steps per bound (default 20)")
    p_eval.add_argument("--radius", type=_non_negative_int, default=0, metavar="STEPS", help="bound propagation: certified radius by STEPS bisection steps on eps per batch (gloro's radius is closed form)")
    _add_common_eval(p_eval, model_sources=True)

    p_demo = sub.add_parser("demo", help="train and certify on the embedded default data")
    p_demo.add_argument("--out", default="out/demo")
    p_demo.add_argument("--epochs", type=_positive_int, default=120, help="epochs per digits model")
    p_demo.add_argument("--synthetic-epochs", type=_positive_int, default=150)
    p_demo.add_argument("--quiet", action="store_true")

    p_compare = sub.add_parser("compare", help="compare certifiers on one model, guarantee and eps")
    p_compare.add_argument("--certifiers", type=_certifier_list, default=("gloro", "ibp", "crown-ibp", "crown"), help="comma-separated certifier names; NAME:MODE picks a spec mode, e.g. crown-ibp:anchor")
    _add_common_eval(p_compare, model_sources=True)

    p_attack = sub.add_parser(
        "attack",
        help="attack each point's relaxed guarantee (empirical robust accuracy); with a certifier, try to break its certificates",
    )
    p_attack.add_argument("--certifier", type=lambda text: _certifier(text, allow_none=True), default="gloro",
                          help="certifier whose certificates are attacked, or 'none' to attack only")
    p_attack.add_argument("--steps", type=int, default=50, help="PGD steps per start (>= 1)")
    p_attack.add_argument("--restarts", type=int, default=2, help="PGD random starts besides the one at the clean point (>= 0)")
    p_attack.add_argument("--targets", type=int, default=3, help="opponent classes attacked per acceptable set")
    p_attack.add_argument("--seed", type=int, default=0)
    p_attack.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack (run for the standard guarantee)")
    p_attack.add_argument("--autoattack-fast", action="store_true", help="AutoAttack's APGD-CE and APGD-T only")
    _add_common_eval(p_attack, model_sources=True)

    p_groups = sub.add_parser(
        "groups", help="IGRP label groups: cluster a (naturally trained) checkpoint's logit-layer weights"
    )
    p_groups.add_argument("--checkpoint", required=True, help="relaxplug checkpoint (.pt), e.g. of a 'method: natural' run")
    p_groups.add_argument("--n-groups", type=_positive_int, required=True, help="number of groups")
    p_groups.add_argument("--linkage", default="average", help="average | complete | single | weighted | ward")
    p_groups.add_argument("--metric", default="cosine", help="cosine | euclidean | correlation (distance between weight rows)")
    p_groups.add_argument("--out", default=None, help="directory for groups.yaml and similarity.png (default: the checkpoint's)")

    sub.add_parser("list", help="list guarantees, certifiers, architectures and data sets")
    return parser


def _load_for_eval(args: argparse.Namespace):
    """The :class:`~relaxplug.evaluation.sources.ModelSource` of ``eval``/``compare``/``attack``;
    sets ``args.norm`` (a :class:`~relaxplug.norms.Norm`, the model's own norm by default)."""
    from relaxplug.distributed import main_process
    from relaxplug.evaluation.sources import load_model_source
    from relaxplug.norms import Norm

    norm = None if args.norm is None else Norm(args.norm)  # a bad --norm fails before any loading
    source = load_model_source(
        checkpoint=args.checkpoint, robustbench=args.robustbench, lirpa_model=args.lirpa_model,
        dataset=args.dataset, threat_model=args.threat_model, model_dir=args.model_dir,
        lirpa_checkpoint=args.lirpa_checkpoint, lirpa_normalize=args.lirpa_normalize, guarantee=args.guarantee,
        eps=args.eps, data=args.data, data_root=args.data_root, split=args.split, device=args.device,
    )
    args.norm = norm if norm is not None else source.norm
    if not args.checkpoint and main_process():  # under torchrun: rank 0 reports
        print(source.describe(args.norm))
    return source


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--out``, or checkpoint directory (the default output), before any work.

    A checkpoint whose directory does not exist is left to the loader's "not found" error
    rather than creating the directory.
    """
    checkpoint = getattr(args, "checkpoint", None)
    if args.out:
        check_output_dir(args.out)
    elif checkpoint and Path(checkpoint).parent.is_dir():
        check_output_dir(Path(checkpoint).parent)


def _model_file(args: argparse.Namespace, loaded) -> Path:
    """The checkpoint certified: ``--checkpoint``, or the zoo model's file."""
    return Path(args.checkpoint) if args.checkpoint else Path(loaded.path)


def _cmd_eval(args: argparse.Namespace) -> int:
    from relaxplug import distributed
    from relaxplug.evaluation.dataset import certify_dataset
    from relaxplug.evaluation.metrics import summarize
    from relaxplug.evaluation.report import eval_filename, format_table, write_json

    if args.certifier == "gloro":
        options = {"lipschitz": args.lipschitz}
    else:
        options = {"spec": args.spec, "radius_bisection": args.radius}
    if args.alpha_iterations is not None:
        if args.certifier != "alpha-crown":
            raise ValueError("--alpha-iterations applies to --certifier alpha-crown only")
        options["iterations"] = args.alpha_iterations
    _check_out(args)
    _load_optional_certifiers()
    with distributed.session(args.device) as context:  # under torchrun: this rank's device, a shard of the data
        args.device = str(context.device)
        loaded, guarantee, spec, eps, dataset, device = _load_for_eval(args)
        out_dir = check_output_dir(args.out or _model_file(args, loaded).parent)
        gathered = certify_dataset(
            loaded.model, dataset, eps, args.norm, args.certifier, guarantee, args.batch_size, device,
            limit=args.limit, progress=not args.quiet, context=context, **options,
        )
    if gathered is None:  # a rank other than 0: rank 0 reports and writes
        return 0
    cert, logits, labels = gathered
    record = summarize(cert, logits, labels)
    record["guarantee"] = spec
    record["checkpoint"] = str(_model_file(args, loaded))
    print(format_table([record], IGRP_EVAL_COLUMNS if "eps_out" in record else EVAL_COLUMNS))
    path = write_json(out_dir / eval_filename(record), record)
    print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from relaxplug import distributed
    from relaxplug.evaluation.compare import compare_certifiers, format_table, save

    _check_out(args)
    _load_optional_certifiers()
    with distributed.session(args.device) as context:  # under torchrun: this rank's device, a shard of the batches
        args.device = str(context.device)
        loaded, guarantee, spec, eps, dataset, device = _load_for_eval(args)
        out_dir = check_output_dir(args.out or _model_file(args, loaded).parent / "compare")
        if args.limit is not None:
            dataset = Subset(dataset, range(min(args.limit, len(dataset))))
        if len(dataset) == 0:
            raise ValueError("the data split is empty: nothing to compare")
        x, y = next(iter(DataLoader(dataset, batch_size=len(dataset))))
        result = compare_certifiers(
            loaded.model, x.to(device), y.to(device), guarantee, eps, args.norm, args.certifiers,
            batch_size=args.batch_size, progress=not args.quiet, context=context,
        )
    if result is None:  # a rank other than 0: rank 0 reports and writes
        return 0
    print(format_table(result))
    for name, reason in result.skipped.items():
        print(f"warning: {name} skipped: {reason}", file=sys.stderr)
    if not result.records:
        raise NothingMeasured(f"no certifier could run ({', '.join(result.skipped)} skipped): nothing was measured")
    save(result, out_dir)
    print(f"wrote {out_dir}")
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from relaxplug import distributed
    from relaxplug.attacks.report import attack_report, report_columns
    from relaxplug.attacks.settings import AttackSettings
    from relaxplug.evaluation.report import format_table, write_json

    _check_out(args)
    _load_optional_certifiers()
    settings = AttackSettings(steps=args.steps, restarts=args.restarts, targets=args.targets, seed=args.seed,
                              batch_size=args.batch_size, autoattack=not args.no_autoattack,
                              autoattack_fast=args.autoattack_fast)
    with distributed.session(args.device) as context:  # under torchrun: this rank's device, a shard of the blocks
        args.device = str(context.device)
        source = _load_for_eval(args)
        if not max(source.guarantee.radii(None if source.guarantee.carries_radii else source.eps)) > 0:
            raise ValueError(f"attack at eps {source.eps:g}: a ball of radius 0 is one point, an attack there "
                             "cannot find a counterexample; give --eps > 0")
        certifier = None if args.certifier.strip().lower() in ("", "none") else args.certifier
        record = attack_report(source.model, source.dataset, source.guarantee, source.eps, args.norm, certifier,
                               settings, limit=args.limit, device=source.device, progress=not args.quiet,
                               context=context)
    if record is None:  # a rank other than 0: rank 0 reports and writes
        return 0
    record["guarantee"] = source.spec
    record["checkpoint"] = str(_model_file(args, source.loaded))
    print(format_table([record], report_columns(record)))
    path = write_json((Path(args.out) if args.out else _model_file(args, source.loaded).parent) / "attack.json", record)
    print(f"wrote {path}")
    if record["broken"]:
        shown = ", ".join(str(i) for i in record["broken_points"][:50])
        more = "" if record["broken"] <= 50 else f" (and {record['broken'] - 50} more)"
        print(f"BROKEN: {record['broken']} certificate(s) broken by attacks at points {shown}{more}")
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from relaxplug.evaluation.report import format_history
    from relaxplug.models.checkpoint import CheckpointError
    from relaxplug.training.config import load_config
    from relaxplug.training.trainer import train
    from relaxplug.distributed import main_process

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    config = load_config(args.config, overrides)
    check_output_dir(config.output_dir, "out_dir")
    try:
        result = train(config, resume=not args.no_resume, progress=not args.quiet)
    except CheckpointError as error:
        if args.no_resume:
            raise
        raise CheckpointError(f"{error}; cannot resume from it: pass --no-resume to start over") from error
    if main_process():  # under torchrun every rank returns here; rank 0 reports
        print(f"trained {config.name}:")
        print(format_history(result.history))
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from relaxplug.training.reproduce import format_table, reproduce

    print(format_table(reproduce(args.configs, args.overrides, progress=not args.quiet)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from relaxplug.demo import run_demo

    check_output_dir(args.out)
    run_demo(args.out, epochs=args.epochs, synthetic_epochs=args.synthetic_epochs, progress=not args.quiet)
    return 0


def _cmd_groups(args: argparse.Namespace) -> int:
    from relaxplug.groups import format_groups, groups_from_checkpoint

    _check_out(args)
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
    from relaxplug.adapters.groupings import GROUPINGS
    from relaxplug.zoo import list_lirpa_architectures

    print("groupings:     ", ", ".join(f"affinity:{name}" for name in GROUPINGS))
    print("--lirpa-model: ", ", ".join(list_lirpa_architectures()))
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo, "compare": _cmd_compare, "attack": _cmd_attack, "groups": _cmd_groups, "list": _cmd_list, "reproduce": _cmd_reproduce}


class NothingMeasured(RunFailure):
    """A command that ran but measured nothing (every certifier skipped)."""


def _message(error: BaseException) -> str:
    """One line naming the cause: the error's own text (its first line), with the file for OS errors."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": '{error.filename}'" if error.filename else "")
    elif isinstance(error, KeyError):
        text = f"missing key {error.args[0]!r}" if error.args else "missing key"
    else:
        text = str(error)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _exit_code(error: BaseException) -> tuple[int, str]:
    """``(exit code, prefix)``: usage errors 2, failures 1, unexpected errors 1 marked internal."""
    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return USAGE_ERROR, "error"
    if isinstance(error, (OSError, RunFailure)):
        return FAILURE, "error"
    return FAILURE, f"internal error ({type(error).__name__}; rerun with -v for the traceback)"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: ...`` line on stderr (``-v`` keeps Python's form, with the source line)."""
    print(f"warning: {message}", file=sys.stderr)


#: commands that run data-parallel under torchrun (docs/distributed.md); the others need one process
DISTRIBUTED_COMMANDS = ("train", "eval", "compare", "attack")


def _check_processes(command: str) -> None:
    """Refuse a command that does not shard its work when torchrun starts several processes
    (each would repeat the work and write the same files)."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world != "1" and command not in DISTRIBUTED_COMMANDS:
        raise ValueError(f"'relaxplug {command}' runs in one process, torchrun started {world}: run it without "
                         f"torchrun (data-parallel commands: {', '.join(DISTRIBUTED_COMMANDS)})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors: one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version and usage errors (already printed)
        return done.code if isinstance(done.code, int) else USAGE_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with warnings.catch_warnings():
            if not args.verbose:
                warnings.showwarning = _show_warning
            _check_processes(args.command)
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 -- the one place every error becomes a line
        code, prefix = _exit_code(error)
        if args.verbose:
            traceback.print_exc()
        print(f"{prefix}: {_message(error)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
